"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's Python
package; no browser is downloaded), against the API under uvicorn, over an experiment computed on real MNIST."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from common.compute.names import REFERENCE_MAPS
from common.store import db as db
from common.study.config import StudyConfig
from tests.services import ApiServer, Encoder, study_in_process

CHROMIUM = "/usr/bin/chromium"
CFG = StudyConfig(limit=800, epochs=2, k=50, ks=[5, 10, 20],
                  models=["linear_l1", "linear_mse", "relu_l1", "relu_mse", "relu_keep", "pca", "umap", "tsne"])
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--no-first-run", "--disable-extensions"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("page")
    url = f"sqlite:///{folder / 'page.db'}"
    eid, factory = study_in_process(url, CFG, data_dir, folder / "cache")
    factory.kw["bind"].dispose()
    broker = "redis://127.0.0.1:6379/12"  # its own: the encoder answers this study's new images only
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": broker}, folder)
    encoder = Encoder(url, broker, folder)
    yield {"url": api.url, "id": eid, "db": url}
    encoder.stop()
    api.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"the page threw: {errors}"


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
    page.wait_for_selector("#tables[data-ready='1']", timeout=30_000)


def shown(page, column: str) -> list[tuple[int, int]]:
    return [(int(t.get_attribute("data-id")), int(t.get_attribute("data-label")))
            for t in page.query_selector_all(f"#nbrs-{column} .thumb")]


def wanted(server, sample: int, space: str, distance: str, k: int, model: str = "relu_mse",
           experiment: int | None = None) -> list[tuple[int, int]]:
    r = httpx.get(f"{server['url']}/samples/{sample}/neighbors",
                  params={"space": space, "model": model, "distance": distance, "k": k,
                          **({"experiment": experiment} if experiment else {})})
    assert r.status_code == 200, r.text
    return [(n["id"], n["label"]) for n in r.json()["neighbors"]]


def wait_sample(page, sample: int) -> None:
    page.wait_for_selector(f"#nbrs-encoded[data-sample='{sample}']", timeout=10_000)


def test_tables_show_the_apis_values(page, server):
    open_page(page, server["url"] + "/")
    cells = page.eval_on_selector_all(
        "#tables td[data-metric]", "tds => tds.map(td => ({...td.dataset, text: td.textContent}))")
    assert cells
    api = {}
    base = server["url"] + "/metrics"
    for metric, path in (("score_at_k", "/score_at_k"), ("r_nx", "/r_nx"), ("knn_accuracy", "/knn_accuracy")):
        for row in httpx.get(base + path, params={"k": "5,10,20"}).json()["rows"]:
            for k, v in row["values"].items():
                api[(metric, row.get("model") or row.get("space"), row["distance"], k)] = v
    for row in httpx.get(base + "/label_agreement", params={"k": "5,10,20"}).json()["rows"]:
        api[("label_agreement_change", row["model"], row["distance"], str(row["k"]))] = row["change"]
        api[("label_agreement_distance", row["model"], row["distance"], str(row["k"]))] = row["abs_change"]
        api[("same_label_rate", row["model"], row["distance"], str(row["k"]))] = row["encoded_rate"]
        api[("same_label_rate", "original", row["distance"], str(row["k"]))] = row["original_rate"]
    by_label = httpx.get(base + "/score_at_k/by_label").json()
    for row in by_label["rows"]:
        for label, v in row["by_label"].items():
            api[("score_at_k_by_label", row["model"], row["distance"], label)] = v
    for metric in ("trustworthiness", "continuity", "lcmc"):  # the rank measures' tables
        for row in httpx.get(base + "/" + metric, params={"k": "5,10,20"}).json()["rows"]:
            for k, v in row["values"].items():
                api[(metric, row["model"], row["distance"], k)] = v
    for row in httpx.get(base + "/mrre", params={"k": "5,10,20"}).json()["rows"]:
        for k, v in row["values"].items():
            api[(f"mrre_{row['direction']}", row["model"], row["distance"], k)] = v
    for row in httpx.get(base + "/auc_rnx").json()["rows"]:
        api[("auc_rnx", row["model"], row["distance"], str(row["k_max"]))] = row["value"]
    seen = set()
    for c in cells:
        key = (c["metric"], c["space"], c["distance"], c["label"] if "label" in c else c["k"])
        assert float(c["value"]) == api[key], key
        assert abs(float(c["text"]) - api[key]) <= 0.5e-4 + 1e-12, (key, c["text"])
        seen.add(key)
    assert seen == set(api)  # every value of the API is on the page, nothing else
    # the best model per column is marked: score@k at k=20 (ties at the shown precision both marked)
    best = page.eval_on_selector_all("#t-score_at_k td.best[data-k='20']", "tds => tds.map(t => t.dataset.value)")
    top = max(v for (m, s, d, k), v in api.items() if m == "score_at_k" and k == "20" and s not in REFERENCE_MAPS)
    assert best and all(round(float(b), 4) == round(top, 4) for b in best)
    # ... and never the pixel-space baseline row nor a reference map
    assert not page.query_selector_all("#tables td.best[data-space='tsne'], #tables td.best[data-space='umap']")
    assert not page.query_selector_all("#t-knn_accuracy td.best[data-space='original']")
    assert not page.query_selector_all("#t-same_label_rate td.best[data-space='original']")
    assert page.query_selector_all("#t-knn_accuracy td.best")
    # a table sorts by a clicked heading, and exports as CSV with the API's values
    page.click("#t-score_at_k th[data-col='4']")  # k=20, descending
    order = page.eval_on_selector_all("#t-score_at_k td[data-k='20']", "tds => tds.map(t => +t.dataset.value)")
    assert order == sorted(order, reverse=True)
    csv_text = page.evaluate("aeknn.csvOf('t-score_at_k')")
    assert csv_text.splitlines()[0] == "model,distance,k=5,k=10,k=20" and str(top) in csv_text


def test_clicking_a_point_shows_its_neighbours(page, server, tmp_path):
    open_page(page, server["url"] + "/?k=12")
    page.query_selector("#map").scroll_into_view_if_needed()
    box = page.query_selector("#map").bounding_box()
    x, y = page.evaluate("aeknn.screenOf(123)")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#tip:not([hidden])")
    hovered = int(page.evaluate("aeknn.hover"))
    assert f"#{hovered} · label" in page.inner_text("#tip")
    page.mouse.click(box["x"] + x, box["y"] + y)
    picked = int(page.evaluate("aeknn.state.sample"))
    assert picked == hovered
    hx, hy = page.evaluate(f"aeknn.screenOf({picked})")
    assert abs(hx - x) <= 2 and abs(hy - y) <= 2  # the nearest drawn point to the click (123 or one on top of it)
    wait_sample(page, picked)
    assert shown(page, "original") == wanted(server, picked, "original", "l2", 12)
    assert shown(page, "encoded") == wanted(server, picked, "encoded", "l2", 12)
    both = {i for i, _ in shown(page, "original")} & {i for i, _ in shown(page, "encoded")}
    marked = {int(t.get_attribute("data-id")) for t in page.query_selector_all("#nbrs-encoded .thumb.shared")}
    assert marked == both
    assert float(page.get_attribute("#overlap", "data-value")) == pytest.approx(len(both) / 12)
    q = parse_qs(urlparse(page.url).query)
    assert q["sample"] == [str(picked)] and q["k"] == ["12"]
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_typed_id_and_a_deep_link_restore_the_same_view(page, browser, server, tmp_path):
    open_page(page, server["url"] + "/")
    page.select_option("#model", "relu_keep")
    page.select_option("#distance", "l1")
    page.fill("#k", "7")
    page.dispatch_event("#k", "change")
    page.fill("#sample-id", "42")
    page.press("#sample-id", "Enter")
    wait_sample(page, 42)
    want_orig = wanted(server, 42, "original", "l1", 7)
    want_enc = wanted(server, 42, "encoded", "l1", 7, model="relu_keep")
    assert shown(page, "original") == want_orig and shown(page, "encoded") == want_enc
    assert "relu_keep" in page.inner_text("#title-encoded")
    link = page.url
    q = parse_qs(urlparse(link).query)
    assert q == {"experiment": [str(server["id"])], "model": ["relu_keep"], "sample": ["42"], "distance": ["l1"],
                 "k": ["7"]}
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    open_page(other, link)
    wait_sample(other, 42)
    assert shown(other, "original") == want_orig and shown(other, "encoded") == want_enc
    assert other.input_value("#model") == "relu_keep" and other.input_value("#distance") == "l1"
    assert other.input_value("#k") == "7" and other.input_value("#sample-id") == "42"
    other.screenshot(path=str(tmp_path / "deep-link.png"), full_page=True)
    other.context.close()


@pytest.mark.parametrize("model", ["umap", "tsne"])
def test_a_reference_map_is_shown_like_a_trained_model(page, server, model):
    open_page(page, server["url"] + f"/?model={model}&sample=7&k=9")
    wait_sample(page, 7)
    assert page.input_value("#model") == model and model in page.inner_text("#title-encoded")
    assert shown(page, "encoded") == wanted(server, 7, "encoded", "l2", 9, model=model)
    assert page.query_selector(f"#t-score_at_k td[data-space='{model}']")  # in every metric table
    # each neighbour's distance is readable whole, not cut to "0.0…" (a 2-D map's distances are small), in
    # both columns and at both distances (L1's pixel distances pass 100)
    for distance in ("l2", "l1"):
        page.select_option("#distance", distance)
        want = wanted(server, 7, "original", distance, 9)
        for _ in range(100):  # until the thumbnails are this distance's (10 s at most)
            if shown(page, "original") == want:
                break
            page.wait_for_timeout(100)
        assert shown(page, "original") == want
        cut = page.eval_on_selector_all(
            "#nbrs-encoded .dist, #nbrs-original .dist",
            "ds => ds.filter(d => d.scrollWidth > d.clientWidth).map(d => d.textContent)")
        assert cut == [], distance


def test_bad_input_on_the_page_is_named_next_to_its_control(page, server):
    open_page(page, server["url"] + "/")
    page.fill("#sample-id", "800")
    page.press("#sample-id", "Enter")
    assert "between 0 and 799" in page.inner_text("#msg-sample")
    page.fill("#ks", "0")
    page.click("#ks-apply")
    page.wait_for_function("document.getElementById('msg-ks').textContent.includes('k:')")
    page.fill("#ks", "5,abc")
    page.click("#ks-apply")
    assert "is not a comma list of whole numbers" in page.inner_text("#msg-ks")
    assert "^" not in page.inner_text("#msg-ks")  # a sentence, not a regex
    assert page.query_selector_all("#tables td[data-metric]")  # the last good tables stay
    page.fill("#ks", "3,15,30")
    page.click("#ks-apply")
    page.wait_for_selector("#t-score_at_k td[data-k='30']")
    assert parse_qs(urlparse(page.url).query)["ks"] == ["3,15,30"]  # the k columns go in the URL


@pytest.mark.parametrize("query, words", [
    ("model=relu_msee", "model=relu_msee is not a model of experiment"),
    ("k=500", "k=500 is outside 1..50"),
    ("experiment=99", "experiment=99 does not exist"),
    ("sample=5000", "sample=5000 is outside 0..799"),
    ("ks=5,abc", "ks=5,abc is not a comma list"),
])
def test_an_invalid_deep_link_is_named_then_the_url_says_what_is_shown(page, server, query, words):
    page.goto(f"{server['url']}/?{query}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert words in page.inner_text("#message") and page.is_visible("#message")
    q = parse_qs(urlparse(page.url).query)  # the URL says what the page shows, not what the link asked
    assert q["experiment"] == [str(server["id"])] and "ks" not in q and "sample" not in q
    for key in ("model", "distance", "k"):
        assert q[key] == [page.input_value(f"#{key}")], key
    page.select_option("#distance", "l1")  # the next change clears the message
    page.wait_for_function("document.getElementById('message').hidden")


@pytest.fixture(scope="module")
def two(tmp_path_factory, data_dir):
    """A server whose latest experiment trained other models than the first (and than relu_mse)."""
    folder = tmp_path_factory.mktemp("two")
    url = f"sqlite:///{folder / 'two.db'}"
    ids = []
    for models, seed in ((["relu_mse", "linear_l1"], 0), (["pca"], 2), (["pca", "linear_mse"], 1)):
        eid, factory = study_in_process(url, StudyConfig(limit=300, epochs=1, k=20, ks=[5, 10], models=models,
                                                         seed=seed), data_dir, folder / "cache")
        factory.kw["bind"].dispose()
        ids.append(eid)
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15"}, folder)
    yield {"url": api.url, "first": ids[0], "maps_only": ids[1], "latest": ids[2]}
    api.stop()


def query_of(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_a_plain_visit_and_a_switch_of_experiment_blame_no_link(page, two):
    open_page(page, two["url"] + "/")
    assert not page.is_visible("#message"), page.inner_text("#message")
    assert query_of(page)["experiment"] == str(two["latest"])
    assert page.input_value("#model") == query_of(page)["model"] == "linear_mse"  # its first in the study's order
    page.select_option("#experiment", str(two["first"]))
    page.wait_for_function(f"document.body.dataset.ready === '1' && window.aeknn.exp && window.aeknn.exp.id === "
                           f"{two['first']}", timeout=30_000)
    page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
    assert not page.is_visible("#message"), page.inner_text("#message")
    assert query_of(page)["experiment"] == str(two["first"]) and page.input_value("#model") == "relu_mse"
    assert query_of(page)["model"] == "relu_mse"


def test_summaries_follow_the_numbers_and_a_box_that_cannot_be_drawn_says_why(page, server, two):
    open_page(page, server["url"] + "/")
    assert page.evaluate("[trend(0.949, 0.951), trend(0.951, 0.949), trend(0.5, 0.5)]") == [
        "rises from", "falls from", "stays at"]
    findings = page.inner_text("#findings-text")
    assert ("rises from" in findings) != ("falls from" in findings) or "stays at" in findings
    # each column: the best trained model marked; a reference map above it marked as the best of all
    r = httpx.get(f"{server['url']}/metrics/score_at_k", params={"k": ",".join(map(str, CFG.ks))}).json()
    for k in CFG.ks:  # a column compares every row of it: each model at each distance
        vals = {(row["model"], row["distance"]): row["values"][str(k)] for row in r["rows"]}
        trained = max(v for (m, _), v in vals.items() if m not in REFERENCE_MAPS)
        overall = max(vals.values())
        cells = page.query_selector_all(f"#t-score_at_k td[data-k='{k}']")
        shown_best = [float(c.get_attribute("data-value")) for c in cells if c.get_attribute("class") == "best"]
        shown_over = [float(c.get_attribute("data-value")) for c in cells
                      if c.get_attribute("class") == "best-overall"]
        assert shown_best and all(round(v, 4) == round(trained, 4) for v in shown_best), (k, shown_best)
        if round(overall, 4) > round(trained, 4):
            assert shown_over and all(round(v, 4) == round(overall, 4) for v in shown_over), (k, shown_over)
        else:
            assert not shown_over, (k, shown_over)
    # an experiment of reference maps alone: the reconstructions box says why it is empty, no broken image
    open_page(page, f"{two['url']}/?experiment={two['maps_only']}")
    assert "no reconstructions" in page.inner_text("#recon-wait") and page.is_hidden("#recon")


def test_back_and_forward_walk_through_the_selections(page, server):
    open_page(page, server["url"] + "/")
    for sample in (3, 4, 5):
        page.fill("#sample-id", str(sample))
        page.press("#sample-id", "Enter")
        wait_sample(page, sample)
    page.select_option("#distance", "l1")
    page.wait_for_function("new URLSearchParams(location.search).get('distance') === 'l1'")
    page.go_back()
    page.wait_for_function("new URLSearchParams(location.search).get('distance') === 'l2'")
    assert page.input_value("#distance") == "l2"
    for sample in (4, 3):
        page.go_back()
        wait_sample(page, sample)
        assert query_of(page)["sample"] == str(sample) and page.input_value("#sample-id") == str(sample)
        assert shown(page, "original") == wanted(server, sample, "original", "l2", 10)
    page.go_forward()
    wait_sample(page, 4)
    assert query_of(page)["sample"] == "4" and not page.is_visible("#message")


def test_findings_charts_and_where_pixel_neighbours_landed(page, server, tmp_path):
    open_page(page, server["url"] + "/?k=50")
    page.wait_for_selector("#findings[data-ready='1']")
    findings = page.inner_text("#findings")
    score = httpx.get(server["url"] + "/metrics/score_at_k", params={"k": "10"}).json()
    rows = [r for r in score["rows"] if r["distance"] == "l2"]
    best = max((r for r in rows if r["model"] not in REFERENCE_MAPS), key=lambda r: r["values"]["10"])
    assert f"{best['model']} keeps the most" in findings and f"{100 * best['values']['10']:.1f} %" in findings
    tsne = next(r for r in rows if r["model"] == "tsne")  # the reference maps as yardsticks, after it
    assert "the reference maps keep" in findings and f"{100 * tsne['values']['10']:.1f} % (tsne)" in findings
    assert "5-nearest-neighbour vote" in findings
    page.wait_for_selector("#charts[data-ready='1']")
    assert page.get_attribute("#charts", "data-points") == "50"  # score@k and R_NX at every k = 1..K
    assert "Pick a sample" in page.inner_text("#selected")  # the landing view says what to do
    page.fill("#sample-id", "42")
    page.press("#sample-id", "Enter")
    wait_sample(page, 42)
    # the map marks where the pixel-space neighbours landed in the code space, with their rank on hover
    pixel = page.evaluate("aeknn.nbrs.original.map(n => n.id)")
    assert pixel == [i for i, _ in wanted(server, 42, "original", "l2", 50)]
    box = page.query_selector("#map").bounding_box()
    nearest_id = pixel[0]
    x, y = page.evaluate(f"aeknn.screenOf({nearest_id})")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#tip:not([hidden])")
    hovered = int(page.evaluate("aeknn.hover"))
    if hovered == nearest_id:
        assert "pixel-space rank 1" in page.inner_text("#tip")
    colour = page.evaluate(f"""(() => {{ const c = document.getElementById('map'), g = c.getContext('2d');
        const [x, y] = aeknn.screenOf({nearest_id}).map(v => Math.round(v * c.width / c.getBoundingClientRect().width));
        for (let dx = -5; dx <= 5; dx++) for (let dy = -5; dy <= 5; dy++) {{
          const p = g.getImageData(x + dx, y + dy, 1, 1).data;
          if (p[0] === 180 && p[1] === 0 && p[2] === 126) return true; }}
        return false; }})()""")
    assert colour  # the magenta square of the nearest pixel-space neighbour (#b4007e)
    labels = page.evaluate("COLOURS")  # no label is drawn in the mark's colour, nor near it
    assert all(sum(abs(int(c[i:i + 2], 16) - v) for i, v in zip((1, 3, 5), (180, 0, 126), strict=True)) > 120
               for c in labels), labels
    page.screenshot(path=str(tmp_path / "findings.png"), full_page=True)


def test_the_api_docs_render_offline(page, server):
    html = httpx.get(server["url"] + "/docs").text
    assert "cdn" not in html.lower() and "/static-offline-docs/swagger-ui-bundle.js" in html
    page.goto(server["url"] + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert "/samples/{sample_id}/neighbors" in page.inner_text(".swagger-ui")
    page.goto(server["url"] + "/redoc")
    page.wait_for_selector("redoc .api-content, [role=main]", timeout=30_000)


def test_page_is_served_offline_from_the_package(server):
    html = httpx.get(server["url"] + "/").text
    assert "<canvas id=\"map\"" in html and "http" not in html.replace("http-equiv", "")  # no CDN
    for asset in ("/static/app.js", "/static/app.css"):
        r = httpx.get(server["url"] + asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_a_running_experiment_shows_live_progress(page, server):
    """Progress comes from the database while a study runs: the page follows it without a reload."""
    engine = db.make_engine(server["db"])
    f = db.session_factory(engine)
    cfg = StudyConfig(limit=800, epochs=5, models=["linear_mse", "relu_mse"]).as_json()
    with db.transaction(f) as s:
        eid = db.create_experiment(session=s, config=cfg)
        db.update_experiment(session=s, experiment_id=eid, status=db.RUNNING, stage="train")
        models = [db.get_or_create_model(session=s, experiment_id=eid, name=n).id for n in cfg["models"]]
        for m in models:
            db.save_checkpoint(session=s, model_id=m, epoch=1, losses=[0.5], checkpoint=b"")
    page.goto(f"{server['url']}/?experiment={eid}")
    page.wait_for_selector("body[data-ready='1']")
    assert "running · train" in page.inner_text("#status")
    page.wait_for_function("document.getElementById('progress-models').innerText.includes('1 / 5')")
    assert page.is_hidden("#explore")  # no tables or map before it succeeds
    with db.transaction(f) as s:
        for m in models:
            db.save_checkpoint(session=s, model_id=m, epoch=2, losses=[0.5, 0.25], checkpoint=b"")
    page.wait_for_function("document.getElementById('progress-models').innerText.includes('2 / 5')",
                           timeout=10_000)  # the page polls every 2 s
    assert "0.25000" in page.inner_text("#progress-models")
    with db.transaction(f) as s:
        db.update_experiment(session=s, experiment_id=eid, status=db.CANCELLED, error="test over")
    engine.dispose()


def test_a_sweep_shows_mean_and_spread_per_grid_point(page, server, data_dir, tmp_path):
    from common.settings import Settings
    from common.study import sweeps
    from common.study.run import run_experiment
    from common.study.runtime import Runtime

    engine = db.make_engine(server["db"])
    f = db.session_factory(engine)
    base = {"limit": 800, "models": ["relu_mse"], "k": 50, "ks": [5, 10, 20], "epochs": 1}
    sweep_id, new = sweeps.create(f, Settings(database_url=server["db"]), base,
                                  {"weight_decay": [1e-3, 0.0], "seed": [0, 1]}, queue=False)
    rt = Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path / "cache", device="cpu")
    for eid in new:
        run_experiment(rt, eid)
    engine.dispose()
    page.goto(server["url"] + "/")
    page.wait_for_selector(f"#sweep-section[data-sweep='{sweep_id}']", timeout=30_000)
    cells = page.eval_on_selector_all("#t-sweep td[data-mean]",
                                      "tds => tds.map(t => ({...t.dataset, text: t.textContent}))")
    api = httpx.get(f"{server['url']}/sweeps/{sweep_id}/metrics/score_at_k", params={"k": "5,10,20"}).json()["rows"]
    assert len(cells) == len(api) == 2 * 2 * 3  # grid points x distances x k
    for c in cells:
        (row,) = [r for r in api if r["space"] == c["space"] and str(r["k"]) == c["k"]
                  and float(c["mean"]) == r["mean"] and float(c["sd"]) == r["sd"]]
        assert c["text"] == f"{row['mean']:.4f} ± {row['sd']:.4f}"
    page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)


def test_behind_a_read_key_the_page_asks_once_and_its_cookie_opens_reads_only(browser, server, tmp_path):
    """The page asks for the key when the server answers 401, trades it at POST /session for an HttpOnly
    cookie, and then reads everything (the digits' sprite too); no script can read the cookie, and
    it opens no write."""
    api = ApiServer({"AEKNN_DATABASE_URL": server["db"], "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15",
                     "AEKNN_READ_KEY": "k-reads-456", "AEKNN_API_KEY": "k-writes-123"}, tmp_path)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept("k-reads-456")))
    try:
        with page.expect_response(lambda r: "/samples/sprite.png" in r.url, timeout=30_000) as sprite:
            open_page(page, f"{api.url}/?sample=3")
            wait_sample(page, 3)
        assert len(asked) == 1 and "needs a key" in asked[0]
        assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's own scripts cannot read it
        cookie = next(c for c in ctx.cookies() if c["name"] == "aeknn_read")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != "k-reads-456"
        # the digits came, in one request, with the cookie
        assert sprite.value.status == 200 and sprite.value.headers["content-type"] == "image/png"
        status = page.evaluate("fetch('/experiments', {method: 'POST', headers: {'content-type': 'application/json'},"
                               " body: '{}'}).then(r => r.status)")
        assert status == 401  # the cookie opens no write
    finally:
        ctx.close()
        api.stop()


# ------------------------------------------------------------------ the habits users bring (issue 40, parts 3 and 4)

def colour_js(canvas: str, colour: str) -> str:
    """A JavaScript expression: the pixels of one exact colour on a canvas (a label's points)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"""(() => {{ const c = document.getElementById('{canvas}');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === {r} && d[i + 1] === {g} && d[i + 2] === {b}) n++;
        return n; }})()"""


def colour_count(page, canvas: str, colour: str) -> int:
    return page.evaluate(colour_js(canvas, colour))


LABEL_0, LABEL_3, LABEL_7 = "#1f77b4", "#d62728", "#7f7f7f"  # app.js's COLOURS


DRAWN = "#d4006a"  # app.js's DRAWN_MARK


def test_a_drawn_digit_lands_on_the_map_beside_its_neighbours_in_both_spaces(page, server):
    """A stroke drawn on the pad in headless Chromium: the marker on the map where the encoder placed it, and
    both neighbour columns, the same lists the API gives for the prepared image; clear takes it away."""
    import numpy as np

    open_page(page, f"{server['url']}/?experiment={server['id']}&k=8")  # other tests add experiments
    assert colour_count(page, "map", DRAWN) == 0
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 0.15 * box["height"])
    page.mouse.down()
    for t in range(1, 21):  # a long vertical stroke: a 1
        page.mouse.move(x + t * 0.2, box["y"] + (0.15 + 0.035 * t) * box["height"])
    page.mouse.up()
    page.wait_for_function("document.getElementById('msg-pad').className.includes('error') || "
                           "(window.aeknn.pad.pending === 0 && !window.aeknn.pad.dirty && "
                           "document.getElementById('pad').dataset.placed === String(window.aeknn.pad.seq))",
                           timeout=20_000)
    assert page.inner_text("#msg-pad") == ""
    assert page.get_attribute("#nbrs-encoded", "data-sample") == "drawn"
    orig = [int(t.get_attribute("data-id")) for t in page.query_selector_all("#nbrs-original .thumb")]
    enc = [int(t.get_attribute("data-id")) for t in page.query_selector_all("#nbrs-encoded .thumb")]
    prepared = page.evaluate("window.aeknn.drawn.prepared")
    r = httpx.post(f"{server['url']}/experiments/{server['id']}/encode?k=8&models=relu_mse",
                   json={"arrays": [np.reshape(prepared, (28, 28)).tolist()]})
    item = r.json()["images"][0]
    assert orig == [n["id"] for n in item["pixel"]["l2"]]
    assert enc == [n["id"] for n in item["models"]["relu_mse"]["neighbors"]["l2"]]
    assert page.evaluate("JSON.parse(document.getElementById('pad').dataset.code)") == \
        item["models"]["relu_mse"]["code"]
    labels = [int(t.get_attribute("data-label")) for t in page.query_selector_all("#nbrs-original .thumb")]
    assert labels.count(1) >= 6, labels  # a vertical stroke looks like the 1s
    assert "your image" in page.inner_text("#selected")
    page.wait_for_function(f"{colour_js('map', DRAWN)} > 40")  # the diamond where it landed (next frame)
    at = page.evaluate("window.aeknn.drawnAt()")
    assert at is not None and all(0 < v < 600 for v in at)
    page.click("#pad-clear")
    page.wait_for_function(f"window.aeknn.drawn === null && {colour_js('map', DRAWN)} === 0")


def test_the_legend_hides_a_label_or_shows_one_alone_and_the_link_keeps_it(page, server):
    open_page(page, server["url"] + "/")
    assert colour_count(page, "map", LABEL_3) > 0
    page.click("#legend button[data-label='3']")
    page.wait_for_function("new URLSearchParams(location.search).get('hide') === '3'")
    page.wait_for_timeout(100)  # the next frame
    assert colour_count(page, "map", LABEL_3) == 0 and colour_count(page, "map", LABEL_7) > 0
    assert page.get_attribute("#legend button[data-label='3']", "aria-pressed") == "false"
    page.click("#legend button[data-label='7']", modifiers=["Shift"])  # 7 alone
    page.wait_for_function("new URLSearchParams(location.search).get('hide') === '0,1,2,3,4,5,6,8,9'")
    page.wait_for_timeout(100)
    assert colour_count(page, "map", LABEL_7) > 0 and colour_count(page, "map", LABEL_0) == 0
    # a hidden label cannot be picked: a click on a sample of label 3 selects nothing
    labels = page.evaluate("Array.from(aeknn.codes.labels)")
    three = labels.index(3)
    box = page.query_selector("#map").bounding_box()
    x, y = page.evaluate(f"aeknn.screenOf({three})")
    page.mouse.click(box["x"] + x, box["y"] + y)
    assert page.evaluate("aeknn.state.sample") in (None, *[i for i, v in enumerate(labels) if v == 7])
    # the link restores the filter; the points-in-view CSV holds exactly the shown samples
    page.goto(server["url"] + "/?hide=3")
    page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
    rows = page.evaluate("inView(aeknn.main)")
    assert rows[0] == ["id", "label", "code_1", "code_2"]
    assert sorted(r[0] for r in rows[1:]) == [i for i, v in enumerate(labels) if v != 3]  # fitted: all in view
    shown_exp, model = page.evaluate("[aeknn.state.experiment, aeknn.main.model]")  # other tests add experiments
    codes = httpx.get(f"{server['url']}/experiments/{shown_exp}/codes", params={"model": model}).json()
    first = rows[1]
    assert first[2] == pytest.approx(codes["codes"][first[0]][0], rel=1e-6)



def test_two_maps_side_by_side_mark_the_selected_sample_in_both(page, server):
    eid = server["id"]  # the experiment with every model (other tests add experiments of their own)
    open_page(page, server["url"] + f"/?experiment={eid}&sample=5")
    wait_sample(page, 5)
    page.select_option("#compare", "pca")
    page.wait_for_selector("#map2[data-ready='1']", timeout=30_000)
    page.wait_for_selector("#nbrs-compare[data-sample='5']", timeout=10_000)
    assert query_of(page)["compare"] == "pca" and page.is_visible("#map2")
    assert shown(page, "compare") == wanted(server, 5, "encoded", "l2", 10, model="pca", experiment=eid)
    assert shown(page, "encoded") == wanted(server, 5, "encoded", "l2", 10, experiment=eid)
    for canvas, m in (("map", "aeknn.main"), ("map2", "aeknn.side")):  # the black ring round sample 5 on both
        x, y = page.evaluate(f"(() => {{ const c = {m}.codes; return [c.sx[5], c.sy[5]]; }})()")
        ring = page.evaluate(f"""(() => {{ const g = document.getElementById('{canvas}').getContext('2d');
            let dark = 0; for (const [dx, dy] of [[9, 1], [-7, 1], [1, 9], [1, -7]]) {{
              const p = g.getImageData({x} + dx, {y} + dy, 1, 1).data; if (p[0] + p[1] + p[2] < 200) dark++; }}
            return dark; }})()""")
        assert ring >= 3, (canvas, ring)
    # the pointer over a sample on one map rings it on the other too; a click on either selects
    box = page.query_selector("#map2").bounding_box()
    x, y = page.evaluate("aeknn.screenOf(77, aeknn.side)")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#tip2:not([hidden])")
    hovered = page.evaluate("aeknn.hover")
    assert "code (" in page.inner_text("#tip2")
    page.mouse.click(box["x"] + x, box["y"] + y)
    wait_sample(page, hovered)
    page.wait_for_selector(f"#nbrs-compare[data-sample='{hovered}']")
    assert query_of(page)["sample"] == str(hovered)
    page.reload()
    page.wait_for_selector("#map2[data-ready='1']", timeout=30_000)
    assert page.input_value("#compare") == "pca"


def test_the_runs_table_sorts_opens_a_run_and_overlays_its_curves(page, two):
    open_page(page, two["url"] + "/")
    page.wait_for_selector("#runs-section[data-ready='1']")
    runs = [int(r.get_attribute("data-run")) for r in page.query_selector_all("#t-runs tr[data-run]")]
    assert sorted(runs) == sorted([two["first"], two["maps_only"], two["latest"]])
    for run in runs:  # the headline: the best trained model's score@10 (L2), from the API
        score = httpx.get(f"{two['url']}/metrics/score_at_k", params={"experiment": run, "k": 10}).json()
        rows = [r for r in score["rows"] if r["distance"] == "l2"]
        trained = [r for r in rows if r["model"] not in REFERENCE_MAPS] or rows
        best = max(trained, key=lambda r: r["values"]["10"])
        cells = page.query_selector_all(f"#t-runs tr[data-run='{run}'] td")
        assert cells[10].inner_text() == best["model"]
        assert float(cells[11].get_attribute("data-value")) == best["values"]["10"]
    page.click("#t-runs th[data-col='7']")  # seed, descending
    seeds = [int(c.inner_text()) for c in page.query_selector_all("#t-runs tr[data-run] td:nth-child(8)")]
    assert seeds == sorted(seeds, reverse=True)
    page.check(f"#t-runs input[data-run='{two['first']}']")
    page.wait_for_function(f"document.getElementById('charts').dataset.overlay === '{two['first']}'")
    assert query_of(page)["overlay"] == str(two["first"])
    header = page.evaluate("aeknn.chartCsv('chart-score')").splitlines()[0].split(",")
    assert f"#{two['first']} relu_mse l2" in header and "linear_mse l2" in header
    page.click(f"#t-runs a[href='?experiment={two['first']}']")
    page.wait_for_function(f"window.aeknn.exp && window.aeknn.exp.id === {two['first']} && "
                           "document.body.dataset.ready === '1'", timeout=30_000)
    assert query_of(page)["experiment"] == str(two["first"])


def test_charts_show_values_on_hover_and_download_as_png_and_csv(page, server, tmp_path):
    open_page(page, server["url"] + "/")
    page.wait_for_selector("#charts[data-ready='1']")
    canvas = page.query_selector("#chart-score")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)
    tip = page.wait_for_selector(".chart:has(#chart-score) .chart-tip:not([hidden])")
    k = int(page.get_attribute("#chart-score", "data-hover-x"))
    score = httpx.get(server["url"] + "/metrics/score_at_k", params={"k": k}).json()
    row = next(r for r in score["rows"] if r["model"] == "relu_mse" and r["distance"] == "l2")
    text, value = tip.inner_text(), float(format(row["values"][str(k)], ".3g"))
    assert f"k = {k}" in text and f"relu_mse l2: {value}" in text, text
    tools = page.query_selector(".chart:has(#chart-score) .chart-tools")
    with page.expect_download() as png:
        tools.query_selector("button.png").click()
    assert png.value.suggested_filename == "chart-score.png"
    assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with page.expect_download() as csv:
        tools.query_selector("button.csv").click()
    lines = Path(csv.value.path()).read_text().splitlines()
    every = httpx.get(server["url"] + "/metrics/score_at_k", params={"k": "all"}).json()
    assert lines[0].split(",")[0] == "k" and len(lines) == 1 + len(every["k"])
    col = lines[0].split(",").index("relu_mse l2")
    want = next(r for r in every["rows"] if r["model"] == "relu_mse" and r["distance"] == "l2")["values"]
    assert [float(line.split(",")[col]) for line in lines[1:]] == [want[str(k)] for k in every["k"]]
    # relu_keep's progress counts its encoder's epochs and says what follows
    open_page(page, f"{server['url']}/?experiment={server['id']}")
    assert "relu_keep: its encoder trains 1 epoch, then its map" in page.inner_text("#progress")


@pytest.mark.parametrize("chart, route, direction", [
    ("chart-trust", "trustworthiness", None), ("chart-cont", "continuity", None),
    ("chart-mrre-false", "mrre", "false"), ("chart-mrre-missing", "mrre", "missing")])
def test_the_rank_measures_are_drawn_against_k_from_the_api(page, server, chart, route, direction):
    """Trustworthiness, continuity and both MRREs as curves beside score@k: every model and distance at every
    k where the measure is defined (k < N/2), each value the API's."""
    open_page(page, server["url"] + "/")
    page.wait_for_selector("#charts[data-ready='1']")
    lines = page.evaluate(f"aeknn.chartCsv('{chart}')").splitlines()
    every = httpx.get(f"{server['url']}/metrics/{route}", params={"k": "all"}).json()
    rows = [r for r in every["rows"] if direction is None or r["direction"] == direction]
    header = lines[0].split(",")
    assert header[0] == "k" and len(header) == 1 + len(rows)
    defined = [k for k in every["k"] if rows[0]["values"][str(k)] is not None]
    assert defined and len(lines) == 1 + len(defined)
    for r in rows:
        col = header.index(f"{r['model']} {r['distance']}")
        assert [float(line.split(",")[col]) for line in lines[1:]] == [r["values"][str(k)] for k in defined]


def test_the_neighbour_lists_export_as_csv_and_come_in_one_image_request(page, server):
    digits = []
    page.on("request", lambda r: digits.append(r.url) if "/image.png" in r.url or "/sprite.png" in r.url else None)
    open_page(page, server["url"] + f"/?sample=9&k={CFG.k}")
    wait_sample(page, 9)
    assert len(digits) == 1 and "/samples/sprite.png" in digits[0], digits  # 1 + 2 x 50 digits, one request
    with page.expect_download() as dl:
        page.click("#export-nbrs")
    rows = [line.split(",") for line in Path(dl.value.path()).read_text().splitlines()]
    assert rows[0] == ["sample", "space", "distance_kind", "rank", "id", "label", "distance", "in_both"]
    for space, model in (("original", "relu_mse"), ("relu_mse", "relu_mse")):
        got = [(int(r[4]), int(r[5])) for r in rows[1:] if r[1] == space]
        assert got == wanted(server, 9, "original" if space == "original" else "encoded", "l2", CFG.k, model)


def test_at_800_px_nothing_scrolls_sideways_and_the_neighbours_sit_beside_the_map(browser, server):
    ctx = browser.new_context(viewport={"width": 800, "height": 900})
    page = ctx.new_page()
    try:
        open_page(page, server["url"] + "/?sample=5&k=20")
        wait_sample(page, 5)
        assert page.evaluate("document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth")
        page.query_selector("#map").scroll_into_view_if_needed()
        the_map = page.query_selector("#map").bounding_box()
        nbrs = page.query_selector("#nbrs-original .thumb").bounding_box()
        assert nbrs["x"] >= the_map["x"] + the_map["width"], (the_map, nbrs)  # beside, not below
        assert nbrs["y"] < the_map["y"] + the_map["height"]
    finally:
        ctx.close()


def test_thumbnails_are_reached_with_tab_and_every_control_has_a_name(page, server):
    open_page(page, server["url"] + "/?sample=5")
    wait_sample(page, 5)
    page.focus("#sample-id")
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('thumb')"):
            break
    else:
        pytest.fail("no thumbnail is reachable with Tab")
    target = int(page.evaluate("document.activeElement.dataset.id"))
    page.keyboard.press("Enter")
    wait_sample(page, target)
    assert query_of(page)["sample"] == str(target)
    # Chromium's own accessibility tree: every control, link, picture and map has a name
    cdp = page.context.new_cdp_session(page)
    nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    roles = {"button", "textbox", "spinbutton", "combobox", "checkbox", "link", "image", "Canvas", "group"}
    nameless = [(n["role"]["value"], n.get("backendDOMNodeId")) for n in nodes
                if not n.get("ignored") and n.get("role", {}).get("value") in roles
                and not (n.get("name") or {}).get("value", "").strip()]
    assert not nameless, nameless
    named = {n["role"]["value"] for n in nodes if not n.get("ignored")}
    assert {"button", "combobox", "image", "checkbox"} <= named, sorted(named)


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, data_dir):
    """A server whose experiment holds two uploaded embeddings, scored in this process (as `aeknn evaluate`)."""
    import numpy as np

    from common.study import embeddings
    from common.study.runtime import Runtime
    from common.study.stages import stage_embedding

    folder = tmp_path_factory.mktemp("uploaded")
    url = f"sqlite:///{folder / 'up.db'}"
    eid, factory = study_in_process(url, StudyConfig(limit=300, epochs=1, k=20, ks=[5, 10],
                                                     models=["linear_mse", "pca"]), data_dir, folder / "cache")
    rng = np.random.default_rng(1)
    for name, m in (("mine2", 2), ("mine5", 5)):
        embeddings.record(factory, eid, name, rng.normal(size=(300, m)))
        stage_embedding(Runtime(factory=factory, data_dir=data_dir, cache_dir=folder / "cache", device="cpu"),
                        eid, name)
    factory.kw["bind"].dispose()
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15"}, folder)
    yield {"url": api.url, "id": eid}
    api.stop()


def test_uploaded_embeddings_appear_among_the_models_marked_and_compared(page, uploaded):
    open_page(page, f"{uploaded['url']}/?sample=4")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
    assert ["mine2", "mine2 (uploaded)"] in options and ["mine5", "mine5 (uploaded)"] in options
    assert "The uploaded embeddings keep" in page.inner_text("#findings")
    page.select_option("#model", "mine5")
    page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
    page.wait_for_function("document.getElementById('title-encoded').textContent.startsWith('mine5')")
    assert "5-D codes by their first two principal components" in page.inner_text("#map-title")
    wait_sample(page, 4)
    assert shown(page, "encoded") == wanted(uploaded, 4, "encoded", "l2", 10, model="mine5")
    page.select_option("#compare", "linear_mse")
    page.wait_for_selector("#compare-summary[data-agreement]", timeout=30_000)
    want = httpx.get(f"{uploaded['url']}/experiments/{uploaded['id']}/compare",
                     params={"models": "mine5,linear_mse", "k": 10}).json()
    assert float(page.get_attribute("#compare-summary", "data-agreement")) == want["agreement"]
    first = want["differ_most"][0]["id"]
    page.click(f"#compare-summary a[data-id='{first}']")
    wait_sample(page, first)
    # the tables mark a trained model best, never an upload (a yardstick, as a reference map)
    for cell in page.query_selector_all("#t-score_at_k td.best"):
        assert cell.get_attribute("data-space") not in ("mine2", "mine5", "pca")


@pytest.fixture(scope="module")
def colour(tmp_path_factory, data_dir):
    """A study of a CIFAR-10 folder made here (32 x 32 colour images), served by a real API process."""
    from tests.test_sources import classes, write_cifar

    folder = tmp_path_factory.mktemp("colour")
    rgb, y = classes(400, 3072, 10, 13)
    write_cifar(folder / "cifar", rgb.reshape(-1, 32, 32, 3), y)
    yield from served(folder, StudyConfig(data=str(folder / "cifar"), epochs=2, k=30, ks=[5, 10],
                                          models=["relu_mse", "pca"]), data_dir)


def served(folder, config, data_dir):
    """The study run in this process into a database in ``folder``, then served by a real API process."""
    url = f"sqlite:///{folder / 'study.db'}"
    eid, factory = study_in_process(url, config, data_dir, folder / "cache")
    factory.kw["bind"].dispose()
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15"}, folder)
    yield {"url": api.url, "id": eid}
    api.stop()


def test_your_colour_images_are_shown_as_they_are(page, colour):
    """Your data on the page: the run named by its folder, each neighbour drawn from the sprite in colour."""
    open_page(page, f"{colour['url']}/?sample=3&k=8")
    wait_sample(page, 3)
    assert shown(page, "original") == wanted(colour, 3, "original", "l2", 8)
    assert shown(page, "encoded") == wanted(colour, 3, "encoded", "l2", 8)
    assert "cifar" in page.inner_text("body")
    url = page.eval_on_selector("#nbrs-original .thumb .digit",
                                "d => getComputedStyle(d).backgroundImage.slice(5, -2)")
    png = httpx.get(url if url.startswith("http") else colour["url"] + url).content
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGB" and img.size[1] == 64  # one row of tiles, each 32 x 32 at scale 2


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, data_dir):
    """A study of vectors that came without labels, served by a real API process."""
    import numpy as np

    from tests.test_sources import classes

    folder = tmp_path_factory.mktemp("unlabelled")
    x, _ = classes(300, 40, 4, 15)
    np.savez(folder / "cells.npz", X=x / 7.0)
    yield from served(folder, StudyConfig(data=str(folder / "cells.npz"), epochs=1, k=30, ks=[5, 10],
                                          models=["relu_mse", "pca"]), data_dir)


def test_data_without_labels_is_shown_without_any_label_table(page, unlabelled):
    """The page of data that came without labels: the map, the neighbours and every table that needs no
    label; no label table, a sentence saying why, and nothing thrown."""
    open_page(page, f"{unlabelled['url']}/?sample=5&k=6")
    page.wait_for_selector("#findings[data-ready='1']", timeout=30_000)
    wait_sample(page, 5)
    got = page.eval_on_selector_all("#nbrs-original .thumb", "ts => ts.map(t => Number(t.dataset.id))")
    assert got == [i for i, _ in wanted(unlabelled, 5, "original", "l2", 6)]
    ids = page.eval_on_selector_all("#tables table", "ts => ts.map(t => t.id)")
    assert "t-score_at_k" in ids and "t-trustworthiness" in ids
    assert not {"t-knn_accuracy", "t-score_at_k_by_label", "t-label_agreement_change"} & set(ids)
    assert "came without labels" in page.inner_text("#findings")
    # the comparison names no label where there is none
    page.select_option("#compare", "pca")
    page.wait_for_selector("#compare-summary[data-agreement]", timeout=30_000)
    summary = page.inner_text("#compare-summary")
    assert "relu_mse and pca share" in summary and "label" not in summary, summary
    assert "label" not in (page.get_attribute("#compare-summary a", "title") or "x label")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, data_dir):
    """Two studies that score MNIST's held-out test split: both splits ("all"), then the test split alone."""
    folder = tmp_path_factory.mktemp("heldout")
    url = f"sqlite:///{folder / 'h.db'}"
    ids = []
    for split, models in (("all", ["relu_mse", "pca"]), ("test", ["pca"])):
        eid, factory = study_in_process(url, StudyConfig(limit=300, epochs=1, k=20, ks=[5, 10], models=models,
                                                         split=split), data_dir, folder / "cache")
        factory.kw["bind"].dispose()
        ids.append(eid)
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15"}, folder)
    yield {"url": api.url, "all": ids[0], "test": ids[1]}
    api.stop()


def test_the_held_out_test_split_is_shown_beside_the_training_split(page, heldout):
    """Tables of the test split (t-test_*) hold the API's ?split=test values; a chart draws its score@k beside
    the training split's; the findings say what it kept. A study of the test split alone shows only those."""
    eid = heldout["all"]
    open_page(page, f"{heldout['url']}/?experiment={eid}")
    page.wait_for_selector("#findings[data-ready='1']", timeout=30_000)
    page.wait_for_selector("#charts[data-ready='1']", timeout=30_000)
    ids = page.eval_on_selector_all("#tables table", "ts => ts.map(t => t.id)")
    assert {"t-score_at_k", "t-r_nx", "t-test_score_at_k", "t-test_knn_accuracy", "t-test_score_at_k_by_label",
            "t-test_label_agreement_change", "t-test_same_label_rate"} <= set(ids)
    cells = page.eval_on_selector_all("#t-test_score_at_k td[data-metric], #t-test_knn_accuracy td[data-metric]",
                                      "tds => tds.map(td => ({...td.dataset}))")
    api = {}
    for metric in ("score_at_k", "knn_accuracy"):
        body = httpx.get(f"{heldout['url']}/metrics/{metric}",
                         params={"experiment": eid, "k": "5,10", "split": "test"}).json()
        assert body["split"] == "test"
        for row in body["rows"]:
            for k, v in row["values"].items():
                api[("test_" + metric, row.get("model") or row.get("space"), row["distance"], k)] = v
    assert {(c["metric"], c["space"], c["distance"], c["k"]): float(c["value"]) for c in cells} == api
    assert page.is_visible("#chart-heldout") and page.is_visible("#chart-rnx")
    assert "held-out test split" in page.inner_text("#findings")
    assert "held-out test split" in page.inner_text("#t-test_score_at_k")

    open_page(page, f"{heldout['url']}/?experiment={heldout['test']}")
    page.wait_for_selector("#findings[data-ready='1']", timeout=30_000)
    page.wait_for_selector("#charts[data-ready='1']", timeout=30_000)
    ids = page.eval_on_selector_all("#tables table", "ts => ts.map(t => t.id)")
    assert ids and all(i.startswith("t-test_") for i in ids), ids
    assert page.is_visible("#chart-heldout") and not page.is_visible("#chart-score")
    assert "pca keeps the most" in page.inner_text("#findings")
