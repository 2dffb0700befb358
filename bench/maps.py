"""2-D maps of one data set, scored with the project's exact tables and metrics, in one run.

    .venv/bin/pip install -e '.[maps]'
    .venv/bin/python bench/maps.py [--db sqlite:///aeknn.db --experiment ID] [--dataset mnist]
        [--methods seed,keep,pca,umap,tsne] [--keep-loss infonce,neg] [--keep-attraction 1,1.3]
        [--keep-final-positives 15,5] [--keep-noise 0,0.3] [--keep-seeds 0,1,2] [--keep-epochs 100]
        [--keep-refine 0,100] [--keep-refiner tsne,infonce] [--keep-perplexity 30,35]
        [--keep-iterations 250+500,250+600] [--place-epochs 300,900] [--place-positives 10] [--reference-runs 3]
        [--joint]
        [--figure maps.png] [--json maps.json]

Rows: the seed's four autoencoders (their codes and weights read from a finished experiment of the
data set with --db, or trained here with --seed-epochs), the neighbourhood-keeping encoder
(common/compute/keeping.py, trained here, one row per --keep-loss, --keep-attraction,
--keep-final-positives, --keep-noise, --keep-refine, --keep-refiner, --keep-perplexity, --keep-iterations
(early + late, t-SNE's objective) and --keep-seeds: the encoder trained
for the product's share of --keep-epochs and its map refined (under t-SNE's objective, or with --keep-refiner
infonce for --keep-refine epochs as until 2026-12-06), or at --keep-refine 0 the encoder alone for all
--keep-epochs; unseen images placed on the refined map as keeping.place does, together and each as if
alone (its neighbours among the training images only), from keeping.map_start, for each --place-epochs:
a row each, with the time placing the test split together took),
PCA (2 components, exact), UMAP (umap-learn, 2-D, its defaults) and t-SNE (openTSNE, 2-D, its
defaults), as the product fits them for an experiment that asks for them (common/compute/references.py;
here unseeded, every core). Every map's own exact top-50 table (L2, the project's engine) is compared
with the pixel space's: score@k for k = 5, 10, 20, 50, kNN accuracy@5 and R_NX(10), as STUDY.md defines
them. The test split (10,000 images) is scored the same way, neighbours among the test images in both spaces,
for every method that maps an unseen image (t-SNE through openTSNE's transform),
beside the first 10,000 training images scored among themselves (the same N: score@k depends on
how many samples share the map). A last row regresses the seed's encoder onto t-SNE's map
(--fit-epochs): how much of that map this encoder can draw at all. Times are each method's fit on the
training split. The budget line is one seed model (relu_mse) trained alone for 100 epochs, estimated
from --reference-epochs epochs on this machine. With t-SNE, each row's least margin over t-SNE's first run at
any k from 5 to 50 (issue 45's test); --reference-runs fits each reference map several times (its spread).
--joint adds the limit of placing unseen images: relu_keep's refinement over the training and test images at
once (started from PCA), the test images then part of the map, not unseen, scored as the others.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.compute.sizes import DEFAULT_MEMORY_BUDGET  # noqa: E402

KS = (5, 10, 20, 50)
SEED_MODELS = ("linear_l1", "linear_mse", "relu_l1", "relu_mse")


def exact_table(points: np.ndarray, k: int, budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Each row's k nearest other rows, exact, L2 (the engine every table of the product uses)."""
    return exact_table_rows(points, 0, points.shape[0], k, budget)


def exact_table_rows(points: np.ndarray, start: int, stop: int, k: int,
                     budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Rows start..stop's k nearest other rows among all ``points``, exact, L2."""
    from common.compute.neighbors import knn_rows, prepare

    return knn_rows(prepare(points, "l2"), start, stop, k, memory_budget=budget).ids


def scores(pixel_table: np.ndarray, points: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from common.compute.metrics import knn_accuracy, overlap_sums, r_nx, score_at_k

    table = exact_table(np.ascontiguousarray(points, dtype=np.float32), max(KS))
    out = {f"score@{k}": score_at_k(pixel_table, table, k) for k in KS}
    ks = np.arange(1, max(KS) + 1)
    out["curve"] = (overlap_sums(pixel_table[:, :max(KS)], table)[0] / (len(points) * ks)).tolist()  # every k
    out["knn@5"] = knn_accuracy(table, labels, 5)
    out["R_NX(10)"] = r_nx(out["score@10"], points.shape[0], 10)
    return out


def seed_codes(args, x, x_test) -> dict[str, tuple[np.ndarray, np.ndarray | None, float | None]]:
    """name -> (train codes, test codes, training seconds) of the seed's four models."""
    import torch

    from common.compute.training import TrainConfig, encode, load_trained, train_group

    out = {}
    if args.db:
        from common.store import db

        engine = db.make_engine(args.db)
        with db.session_factory(engine)() as s:
            exp_id = args.experiment or db.latest_experiment_id(session=s)
            for row in db.list_models(session=s, experiment_id=exp_id):
                if row.codes is None or row.name not in SEED_MODELS:
                    continue
                codes = db.model_codes(row)
                if codes.shape[0] != x.shape[0]:
                    raise SystemExit(f"experiment {exp_id} has {codes.shape[0]} samples, this run {x.shape[0]}")
                model = load_trained(row.name, torch.load(io.BytesIO(row.weights), weights_only=True))
                out[row.name] = (codes, encode(model, x_test).numpy(), None)
        return out
    cfg = TrainConfig(epochs=args.seed_epochs)
    t0 = time.perf_counter()
    cks = train_group(list(SEED_MODELS), x, cfg, recon_ids=[0])
    seconds = time.perf_counter() - t0
    for name, ck in cks.items():
        model = load_trained(name, ck.model_state)
        out[name] = (encode(model, x).numpy(), encode(model, x_test).numpy(), seconds)
    return out


def fit_to_map(x, target: np.ndarray, epochs: int):
    """The seed's ReLU encoder, fed as relu_keep's (each image less the mean image), regressed (MSE, Adam,
    batch 256, one thread) onto a 2-D map: how much of that map this encoder, trained this long, draws."""
    import torch

    from common.compute.keeping import initial_encoder, mean_image
    from common.compute.training import epoch_order

    y = torch.from_numpy(np.asarray(target, np.float32))
    y = (y - y.mean(0)) / y.std()
    model = initial_encoder(0)
    model.center.copy_(mean_image(x))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(1, epochs + 1):
            order = epoch_order(x.shape[0], 0, epoch)
            for b0 in range(0, x.shape[0], 256):
                i = order[b0 : b0 + 256]
                loss = (model(x[i]) - y[i]).square().sum(1).mean()
                optim.zero_grad()
                loss.backward()
                optim.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def reference_seconds(x, epochs: int) -> float:
    """One seed model (relu_mse) alone, ``epochs`` epochs, scaled to 100 epochs."""
    from common.compute.training import TrainConfig, train_group

    t0 = time.perf_counter()
    train_group(["relu_mse"], x, TrainConfig(epochs=epochs), recon_ids=[0])
    return (time.perf_counter() - t0) / epochs * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--limit", type=int, default=None, help="the first N training samples (default: all)")
    ap.add_argument("--methods", default="seed,keep,pca,umap,tsne")
    ap.add_argument("--db", default=None, help="a database with a finished experiment of this data set")
    ap.add_argument("--experiment", type=int, default=None, help="its id (default: the latest finished)")
    ap.add_argument("--seed-epochs", type=int, default=100, help="without --db: train the seed's four here")
    ap.add_argument("--keep-loss", default="infonce", help="comma list of infonce,neg")
    ap.add_argument("--keep-epochs", type=int, default=100)
    ap.add_argument("--keep-batch", type=int, default=256)
    ap.add_argument("--keep-positives", type=int, default=15, help="positives among the first N at the first epoch")
    ap.add_argument("--keep-final-positives", default=None,
                    help="comma list: narrowing to the first N by the last epoch, a row each (default: relu_keep's)")
    ap.add_argument("--keep-attraction", default=None,
                    help="comma list of attraction weights, a row each (default: relu_keep's)")
    ap.add_argument("--keep-noise", default=None,
                    help="comma list of the anchors' noise (standard deviations), a row each (default: relu_keep's)")
    ap.add_argument("--keep-refine", default=None,
                    help="comma list of the map's refinement epochs, a row each (0: the encoder alone; "
                         "default: --keep-epochs, as the product)")
    ap.add_argument("--keep-refiner", default="tsne",
                    help="comma list of map refiners, a row each: tsne (the product's), infonce (until 2026-12-06)")
    ap.add_argument("--keep-perplexity", default=None,
                    help="comma list: t-SNE's perplexity for the tsne refiner (default: the product's)")
    ap.add_argument("--keep-iterations", default=None,
                    help="comma list of EARLY+LATE iterations for the tsne refiner (default: the product's)")
    ap.add_argument("--joint", action="store_true",
                    help="also refine the training and test images together: the test split's limit")
    ap.add_argument("--place-epochs", default=None,
                    help="comma list of epochs to place the test images on a refined map, a row each with its "
                         "time (default: keeping.PLACE_EPOCHS)")
    ap.add_argument("--place-positives", type=int, default=None,
                    help="each test image's nearest images it starts from and is pulled to when placed "
                         "(default: keeping.PLACE_POSITIVES)")
    ap.add_argument("--keep-seeds", default="0", help="comma list of seeds, a row each: the spread of a recipe")
    ap.add_argument("--reference-epochs", type=int, default=3, help="0: skip the budget line")
    ap.add_argument("--reference-runs", type=int, default=1,
                    help="fit each reference map this many times (their libraries' defaults, unseeded: the spread)")
    ap.add_argument("--fit-epochs", type=int, default=100,
                    help="with tsne: also regress the seed's encoder onto t-SNE's map this long (0: no)")
    ap.add_argument("--figure", default=None, help="write the maps side by side to this PNG")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from common.compute.data import load_dataset
    from common.compute.keeping import (
        ATTRACTION,
        ENCODER_SHARE,
        FINAL_POSITIVES,
        NOISE,
        PLACE_EPOCHS,
        PLACE_POSITIVES,
        KeepConfig,
        keep_map,
        map_start,
        place,
        train_keeping,
    )
    from common.compute.refining import EARLY, LATE, PERPLEXITY, refine_columns, refine_map
    from common.compute.training import configure_numerics, encode
    from common.settings import get_settings

    configure_numerics()
    s = get_settings()
    train = load_dataset(args.dataset, s.data_dir, s.cache_dir, args.limit)
    test = load_dataset(args.dataset, s.data_dir, s.cache_dir, None, split="test")
    x = train.scaled()
    methods = args.methods.split(",")
    print(f"{args.dataset}: {train.n} training and {test.n} test images; exact pixel-space L2 tables ...", flush=True)
    t0 = time.perf_counter()
    pix = exact_table(train.images, 200 if "keep" in methods else max(KS))
    sub = min(test.n, train.n)  # as many training images as test images (all 10,000 test images for MNIST)
    test = type(test)(test.name, test.images[:sub], test.labels[:sub])
    x_test = test.scaled()
    pix_test = exact_table(test.images, max(KS))
    pix_sub = exact_table(train.images[:sub], max(KS))
    print(f"  pixel tables {time.perf_counter() - t0:.1f} s", flush=True)

    maps: dict[str, tuple[np.ndarray, np.ndarray | None, float | None]] = {}
    placed_alone: dict[str, np.ndarray] = {}  # relu_keep's test images each placed among the training images only
    place_seconds: dict[str, float] = {}  # how long the test split took to place (together), or to transform
    if "seed" in methods:
        maps.update(seed_codes(args, x, x_test))
    if "keep" in methods:
        pulls = [float(v) for v in args.keep_attraction.split(",")] if args.keep_attraction else [ATTRACTION]
        finals = ([int(v) for v in args.keep_final_positives.split(",")] if args.keep_final_positives
                  else [FINAL_POSITIVES])
        noises = [float(v) for v in args.keep_noise.split(",")] if args.keep_noise else [NOISE]
        seeds = [int(v) for v in args.keep_seeds.split(",")]
        refines = [int(v) for v in args.keep_refine.split(",")] if args.keep_refine else [args.keep_epochs]
        perplexities = ([float(v) for v in args.keep_perplexity.split(",")] if args.keep_perplexity
                        else [PERPLEXITY])
        schedules = ([tuple(int(p) for p in v.split("+")) for v in args.keep_iterations.split(",")]
                     if args.keep_iterations else [(EARLY, LATE)])
        near = PLACE_POSITIVES if args.place_positives is None else args.place_positives
        placings = [int(v) for v in args.place_epochs.split(",")] if args.place_epochs else [PLACE_EPOCHS]
        joint = None  # each test image's nearest among the training and test images, for placing it
        alone = None  # ... among the training images only: each placed as if alone
        for loss, pull, final, noise, refine, refiner, perplexity, (early, late), seed in itertools.product(
                args.keep_loss.split(","), pulls, finals, noises, refines, args.keep_refiner.split(","),
                perplexities, schedules, seeds):
            if (not refine or refiner != "tsne") and (perplexity, (early, late)) != (perplexities[0], schedules[0]):
                continue  # the perplexity and iterations are the tsne refiner's alone
            epochs = max(1, round(args.keep_epochs * ENCODER_SHARE)) if refine else args.keep_epochs
            cfg = KeepConfig(epochs=epochs, batch_size=args.keep_batch, positives=args.keep_positives,
                             final_positives=final, loss=loss, attraction=pull, noise=noise, seed=seed,
                             refine_epochs=refine, refiner=refiner)
            t0 = time.perf_counter()
            model, ck = train_keeping(x, pix, cfg)
            own = refine and refiner == "tsne" and (perplexity, early, late) != (PERPLEXITY, EARLY, LATE)
            codes = (refine_map(encode(model, x).numpy(), train.images, pix, "l2", perplexity=perplexity,
                                early=early, late=late) if own else keep_map(model, x, pix, cfg, train.images, "l2"))
            seconds = time.perf_counter() - t0
            codes_test = encode(model, x_test).numpy()
            placed = {}  # epochs -> (together, alone, seconds together)
            if refine:
                if joint is None:
                    both = np.concatenate([train.images, test.images])
                    joint = exact_table_rows(both, train.n, both.shape[0], near)
                if alone is None:
                    from common.compute.placing import pixel_cross_table

                    alone = pixel_cross_table(train.images, test.images, "l2", near)
                for placing in placings:
                    t1 = time.perf_counter()
                    together = place(map_start(codes, joint, near), codes, joint, cfg, placing, positives=near)
                    took = time.perf_counter() - t1
                    placed[placing] = (together, place(map_start(codes, alone, near), codes, alone, cfg, placing,
                                                       positives=near), took)
            mapped = (f", map {cfg.refiner}" + (f" {refine} ep" if cfg.refiner == "infonce" else
                                                f" p{perplexity:g} {early}+{late}") if refine else "")
            name = (f"relu_keep ({loss}, x{pull:g}, {cfg.positives}->{final}, noise {noise:g}, {epochs} ep{mapped}"
                    + (f", seed {seed})" if len(seeds) > 1 else ")"))
            print(f"  {name} {seconds:.1f} s, loss {ck.losses[0]:.4f} -> {ck.losses[-1]:.4f}", flush=True)
            if not placed:
                maps[name] = (codes, codes_test, seconds)
            for placing, (on_map, each_alone, took) in placed.items():
                row = name if len(placed) == 1 else f"{name[:-1]}, placed {placing} ep)"
                maps[row], placed_alone[row], place_seconds[row] = (codes, on_map, seconds), each_alone, took
    from common.compute.references import fit_map

    xs, xts = x.numpy(), x_test.numpy()
    if args.joint:  # the test images drawn into the map with the training images: what placing them cannot beat
        from common.compute.references import pca

        t0 = time.perf_counter()
        both = np.concatenate([train.images, test.images])
        start, _ = pca(np.concatenate([xs, xts]))
        y = refine_map(start, both, exact_table(both, refine_columns()), "l2")
        maps["refinement over train + test (not unseen)"] = (y[:train.n], y[train.n:], time.perf_counter() - t0)
    for method, title in (("pca", "PCA"), ("umap", "UMAP"), ("tsne", "t-SNE")):
        for run in range(args.reference_runs if method in methods else 0):
            # the product's reference maps, each library with its defaults on every core
            t0 = time.perf_counter()
            emb, transform = fit_map(method, xs, seed=None)
            seconds = time.perf_counter() - t0  # the fit alone
            row = title + (f" (run {run + 1})" if run else "")
            t0 = time.perf_counter()
            maps[row] = (emb, None if transform is None else transform(xts), seconds)
            if transform is not None:
                place_seconds[row] = time.perf_counter() - t0
    if "tsne" in methods:
        emb = maps["t-SNE"][0]
        if args.fit_epochs:  # how much of t-SNE's map the seed's encoder can draw at all
            t0 = time.perf_counter()
            model = fit_to_map(x, emb, args.fit_epochs)
            maps["encoder fit to t-SNE"] = (encode(model, x).numpy(), encode(model, x_test).numpy(),
                                            time.perf_counter() - t0)

    budget = reference_seconds(x, args.reference_epochs) if args.reference_epochs else None
    rows = []
    for name, (codes, codes_test, seconds) in maps.items():
        r = {"map": name, "seconds": seconds, **scores(pix[:, :max(KS)], codes, train.labels)}
        if codes_test is not None:  # the test images against as many training images, each among its own
            t = scores(pix_test, codes_test, test.labels)
            u = scores(pix_sub, codes[:sub], train.labels[:sub])
            r.update({f"train{sub // 1000}k score@10": u["score@10"], "test score@10": t["score@10"],
                      f"train{sub // 1000}k knn@5": u["knn@5"], "test knn@5": t["knn@5"]})
        if name in placed_alone:
            r["alone score@10"] = scores(pix_test, placed_alone[name], test.labels)["score@10"]
        if name in place_seconds:
            r["place s"] = place_seconds[name]
        rows.append(r)
        print(f"  scored {name}", flush=True)
    tsne = next((r["curve"] for r in rows if r["map"] == "t-SNE"), None)
    for r in rows:  # the least margin over t-SNE's first run at any k from 5 to 50 (issue 45's test)
        if tsne is not None:
            r["min gap k5-50"] = min(a - b for a, b in zip(r["curve"][4:], tsne[4:], strict=True))

    cols = [*(f"score@{k}" for k in KS), "knn@5", "R_NX(10)", f"train{sub // 1000}k score@10", "test score@10",
            f"train{sub // 1000}k knn@5", "test knn@5", "alone score@10", "min gap k5-50", "place s"]
    print(f"\n{args.dataset}, N = {train.n} (L2, exact tables)")
    print(f"{'map':34}" + "".join(f"{c:>18}" for c in cols) + f"{'fit s':>10}")
    for r in rows:
        vals = "".join(f"{r[c]:18.4f}" if c in r else f"{'-':>18}" for c in cols)
        sec = f"{r['seconds']:10.1f}" if r["seconds"] is not None else f"{'(stored)':>10}"
        print(f"{r['map']:34}{vals}{sec}")
    if budget is not None:
        print(f"budget: relu_mse alone, 100 epochs on this machine = {budget:.1f} s "
              f"(from {args.reference_epochs} epochs)")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "n": train.n, "rows": rows,
                                               "budget_seconds": budget}, indent=1))
    if args.figure:
        figure(args.figure, maps, train.labels)


def figure(path: str, maps: dict, labels: np.ndarray) -> None:
    from common.study.plots import TAB10, _png, _pyplot

    plt = _pyplot()
    cols = 4
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    colours = TAB10[labels] / 255.0
    for ax, (name, (codes, _, _)) in zip(axes.flat, maps.items(), strict=False):
        ax.scatter(codes[:, 0], codes[:, 1], s=0.2, c=colours, linewidths=0, rasterized=True)
        ax.set_title("\n".join(textwrap.wrap(name, 34)), fontsize=10)  # a long row name on two lines
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    Path(path).write_bytes(_png(fig))


if __name__ == "__main__":
    main()
