"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's Python
package; no browser is downloaded), against the API under uvicorn, over an experiment computed on real MNIST."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from common.compute.names import REFERENCE_MAPS
from common.store import db as db
from common.study.config import StudyConfig
from tests.services import ApiServer, study_in_process

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
    api = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15"}, folder)
    yield {"url": api.url, "id": eid, "db": url}
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


def wanted(server, sample: int, space: str, distance: str, k: int, model: str = "relu_mse") -> list[tuple[int, int]]:
    r = httpx.get(f"{server['url']}/samples/{sample}/neighbors",
                  params={"space": space, "model": model, "distance": distance, "k": k})
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
    cookie, and then reads everything (the digits' <img> requests too); no script can read the cookie, and
    it opens no write."""
    api = ApiServer({"AEKNN_DATABASE_URL": server["db"], "AEKNN_BROKER_URL": "redis://127.0.0.1:6379/15",
                     "AEKNN_READ_KEY": "k-reads-456", "AEKNN_API_KEY": "k-writes-123"}, tmp_path)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept("k-reads-456")))
    try:
        open_page(page, f"{api.url}/?sample=3")
        wait_sample(page, 3)
        assert len(asked) == 1 and "needs a key" in asked[0]
        assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's own scripts cannot read it
        cookie = next(c for c in ctx.cookies() if c["name"] == "aeknn_read")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != "k-reads-456"
        page.wait_for_function("(() => { const i = document.querySelector('#nbrs-original img');"
                               " return i && i.complete && i.naturalWidth > 0; })()", timeout=10_000)  # a digit came
        status = page.evaluate("fetch('/experiments', {method: 'POST', headers: {'content-type': 'application/json'},"
                               " body: '{}'}).then(r => r.status)")
        assert status == 401  # the cookie opens no write
    finally:
        ctx.close()
        api.stop()
