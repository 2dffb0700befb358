"""The ``aeknn`` command line: run the study, read its tables and any sample's neighbours.

Arguments are turned into a :class:`StudyConfig` at once; nothing passes argparse namespaces
around. Progress bars live here, not in the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from common import storage as db
from common.settings import Settings, get_settings

log = logging.getLogger("aeknn")


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary): 256M, 1G, 1073741824."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if t[-1:] in "KMG" else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256M or 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"memory budget must be positive, got {text!r}")
    return value


class TqdmProgress:
    """Stage progress as tqdm bars (on stderr)."""

    def __init__(self) -> None:
        self.bar = None

    def begin(self, stage: str, total: int, unit: str) -> None:
        from tqdm import tqdm

        self.end()
        self.bar = tqdm(total=total, desc=stage, unit=unit.rstrip("s"), dynamic_ncols=True, leave=True)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.bar is not None:
            if info:
                self.bar.set_postfix_str(info, refresh=False)
            self.bar.update(n)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _settings(args: argparse.Namespace) -> Settings:
    s = get_settings()
    updates = {}
    if getattr(args, "db", None):
        updates["database_url"] = args.db
    if getattr(args, "data_dir", None):
        updates["data_dir"] = Path(args.data_dir)
    if getattr(args, "device", None):
        updates["device"] = args.device
    if getattr(args, "memory_budget", None):
        updates["memory_budget"] = args.memory_budget
    return s.model_copy(update=updates)


def _factory(settings: Settings):
    engine = db.make_engine(settings.database_url)
    db.init_db(engine)
    return db.session_factory(engine)


def _runtime(settings: Settings, factory):
    from common.training import configure_numerics  # imports torch: only for the commands that compute

    configure_numerics()  # before any torch operation starts a thread pool
    from common.study import Runtime

    return Runtime(factory=factory, data_dir=settings.data_dir, cache_dir=settings.cache_dir,
                   device=settings.device, memory_budget=settings.memory_budget, progress=TqdmProgress())


def _print_tables(factory, experiment_id: int, fmt: str) -> None:
    from common import report

    with factory() as s:
        tables = report.study_tables(db.load_metrics(session=s, experiment_id=experiment_id))
    if fmt == "json":
        print(json.dumps({"experiment": experiment_id, "tables": report.as_dicts(tables)}, indent=1))
    elif fmt == "csv":
        print(report.render_csv(tables), end="")
    else:
        print(f"experiment {experiment_id}\n")
        print(report.render_text(tables))


def cmd_run(args: argparse.Namespace) -> int:
    from common.config import StudyConfig

    fields = {"dataset": args.dataset, "limit": args.limit, "models": args.models, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "k": args.k,
              "distances": args.distances, "seed": args.seed, "ks": args.ks}
    try:
        cfg = StudyConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "config"
            print(f"aeknn run: invalid {where}: {e['msg']}", file=sys.stderr)
        return 2
    settings = _settings(args)
    factory = _factory(settings)
    from common.study import run_experiment, submit

    experiment_id = submit(factory, cfg)
    log.info("experiment %d: %s", experiment_id, cfg.as_json())
    run_experiment(_runtime(settings, factory), experiment_id)
    _print_tables(factory, experiment_id, "table")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = _settings(args)
    factory = _factory(settings)
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=args.experiment)
    if exp is None:
        print(f"aeknn resume: no experiment {args.experiment}", file=sys.stderr)
        return 1
    from common.study import run_experiment

    run_experiment(_runtime(settings, factory), args.experiment)
    _print_tables(factory, args.experiment, "table")
    return 0


def _experiment_id(factory, given: int | None, cmd: str) -> int | None:
    with factory() as s:
        if given is None:
            found = db.latest_experiment_id(session=s)
            if found is None:
                print(f"aeknn {cmd}: no succeeded experiment in the database yet (run `aeknn run`)",
                      file=sys.stderr)
            return found
        exp = db.get_experiment(session=s, experiment_id=given)
        if exp is None:
            print(f"aeknn {cmd}: no experiment {given}", file=sys.stderr)
            return None
        if exp.status != db.SUCCEEDED:
            print(f"aeknn {cmd}: experiment {given} is {exp.status}, its tables are not complete",
                  file=sys.stderr)
            return None
        return given


def cmd_metrics(args: argparse.Namespace) -> int:
    factory = _factory(_settings(args))
    experiment_id = _experiment_id(factory, args.experiment, "metrics")
    if experiment_id is None:
        return 1
    _print_tables(factory, experiment_id, args.format)
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    factory = _factory(_settings(args))
    experiment_id = _experiment_id(factory, args.experiment, "neighbors")
    if experiment_id is None:
        return 1
    space = db.ORIGINAL if args.space == "original" else args.model
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if args.space == "encoded" and args.model not in exp.config["models"]:
            print(f"aeknn neighbors: experiment {experiment_id} has no model {args.model!r} "
                  f"(it has {exp.config['models']})", file=sys.stderr)
            return 2
        table = db.find_table(session=s, experiment_id=experiment_id, space=space, distance=args.distance)
        if table is None:
            print(f"aeknn neighbors: experiment {experiment_id} has no {space}/{args.distance} table",
                  file=sys.stderr)
            return 2
        if not 0 < args.k <= table.k:
            print(f"aeknn neighbors: --k must be in 1..{table.k}, got {args.k}", file=sys.stderr)
            return 2
        if not 0 <= args.sample_id < table.n:
            print(f"aeknn neighbors: sample id must be in 0..{table.n - 1}, got {args.sample_id}",
                  file=sys.stderr)
            return 2
        ids, labels, dists = db.sample_neighbors(session=s, table_id=table.id, sample_id=args.sample_id)
        own = int(db.dataset_labels(session=s, dataset_id=table.dataset_id)[args.sample_id])
    print(f"experiment {experiment_id}  sample {args.sample_id} (label {own})  space {space}  "
          f"distance {args.distance}  k {args.k}")
    print(f"{'rank':>4}  {'id':>6}  {'label':>5}  {'distance':>10}")
    for r in range(args.k):
        print(f"{r + 1:>4}  {ids[r]:>6}  {labels[r]:>5}  {dists[r]:>10.5f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from common.names import DATASETS, DISTANCES, MODEL_NAMES

    p = argparse.ArgumentParser(prog="aeknn", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common_opts(sp: argparse.ArgumentParser, compute: bool) -> None:
        sp.add_argument("--db", help="database URL (default: AEKNN_DATABASE_URL or sqlite:///aeknn.db)")
        if compute:
            sp.add_argument("--data-dir", help="folder with the IDX files (default: AEKNN_DATA_DIR or ./data)")
            sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA if present)")
            sp.add_argument("--memory-budget", type=_size, help="working memory per chunk, e.g. 256M, 1G")

    run = sub.add_parser("run", help="run the study in this process and print its tables")
    run.add_argument("--dataset", choices=sorted(DATASETS), help="default: mnist")
    run.add_argument("--limit", type=int, help="use the first N training samples (default: all)")
    run.add_argument("--models", type=_csv, help=f"comma list of {','.join(MODEL_NAMES)} (default: all)")
    run.add_argument("--epochs", type=int, help="default: 100")
    run.add_argument("--batch-size", type=int, help="default: 100")
    run.add_argument("--lr", type=float, help="default: 1e-3")
    run.add_argument("--weight-decay", type=float, help="default: 1e-3")
    run.add_argument("--k", type=int, help="K, neighbours kept per sample (default: 200)")
    run.add_argument("--distances", type=_csv, help=f"comma list of {','.join(DISTANCES)} (default: both)")
    run.add_argument("--seed", type=int, help="default: 0")
    run.add_argument("--ks", type=lambda t: [int(x) for x in _csv(t)],
                     help="k of the metric tables (default: 5,10,20,50)")
    common_opts(run, compute=True)
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="continue a stopped experiment where it stopped")
    res.add_argument("experiment", type=int)
    common_opts(res, compute=True)
    res.set_defaults(func=cmd_resume)

    met = sub.add_parser("metrics", help="print the metric tables of a stored experiment")
    met.add_argument("--experiment", type=int, help="default: the latest succeeded experiment")
    met.add_argument("--format", choices=["table", "csv", "json"], default="table")
    common_opts(met, compute=False)
    met.set_defaults(func=cmd_metrics)

    nb = sub.add_parser("neighbors", help="print one sample's nearest neighbours")
    nb.add_argument("sample_id", type=int)
    nb.add_argument("--space", choices=["original", "encoded"], required=True)
    nb.add_argument("--model", choices=list(MODEL_NAMES), default="relu_mse")
    nb.add_argument("--distance", choices=list(DISTANCES), default="l2")
    nb.add_argument("--k", type=int, default=20)
    nb.add_argument("--experiment", type=int, help="default: the latest succeeded experiment")
    common_opts(nb, compute=False)
    nb.set_defaults(func=cmd_neighbors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from common.errors import DataError

    try:
        return args.func(args)
    except DataError as exc:
        print(f"aeknn: data error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aeknn: interrupted; continue with `aeknn resume ID`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
