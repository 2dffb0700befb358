"""The ``aeknn`` command line's arguments: one sub-command per command in cli/commands.py."""

from __future__ import annotations

import argparse

from cli import commands as c


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _db_url(text: str) -> str:
    """A database URL, or a plain path taken as a SQLite file (``--db results/aeknn.db``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in text:
        return f"sqlite:///{text}"
    try:
        make_url(text)
    except (ArgumentError, ValueError):
        raise argparse.ArgumentTypeError(f"not a database URL or a path: {text!r} (e.g. sqlite:///aeknn.db, "
                                         "postgresql+psycopg://user@host/db, or a file name)") from None
    return text


def _size(text: str) -> int:
    """A size for --memory-budget (common/compute/sizes.py reads it, as it reads AEKNN_MEMORY_BUDGET)."""
    from common.compute.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aeknn")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """A mistyped option is one line (what is wrong, and where the help is), exit 2; no usage dump."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from common.compute.names import DATASETS, DISTANCES, MODEL_NAMES

    p = _Parser(prog="aeknn", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"aeknn {_version()}")
    # --db before the command too (aeknn --db x.db metrics); the command's own --db wins when both are given
    p.add_argument("--db", dest="db_before", type=_db_url, help="database URL or SQLite file, for any command")
    sub = p.add_subparsers(dest="command", required=True)

    def common_opts(sp: argparse.ArgumentParser, compute: bool, broker: bool = False) -> None:
        sp.add_argument("--db", type=_db_url, help="database URL, or a path to a SQLite file "
                                                   "(default: AEKNN_DATABASE_URL or sqlite:///aeknn.db)")
        if broker:
            sp.add_argument("--broker", help="Celery broker URL (default: AEKNN_BROKER_URL or redis://127.0.0.1:6379/0)")
        if compute:
            sp.add_argument("--data-dir", help="folder with the IDX files (default: AEKNN_DATA_DIR or ./data)")
            sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (CUDA if present)")
            sp.add_argument("--memory-budget", type=_size, help="working memory per chunk, e.g. 256M, 1G")
            sp.add_argument("--kernel", help="pixel-table path: auto (default: the fastest measured here) or "
                                             "names to force, e.g. f32 or f32,sad-avx2 (AEKNN_KERNEL)")

    def study_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", type=lambda t: int(t) if t.isdigit() else t,
                        help=f"{', '.join(sorted(DATASETS))} (default: mnist), or the name or id of a data set "
                             "uploaded to the database (POST /datasets)")
        sp.add_argument("--data", metavar="PATH",
                        help="your data instead of --dataset: a .npy, .npz (arrays X, y) or IDX file, a folder of "
                             "PNG/JPEG images with one subfolder per class, or a CIFAR-10/100 python folder; "
                             "or cifar10 / cifar100: looked for in the data directory, else downloaded")
        sp.add_argument("--labels", metavar="FILE", help="the labels of .npy or IDX data (a second such file)")
        sp.add_argument("--limit", type=int, help="use the first N training samples (default: all), and the "
                                                  "first N of the test split where it is scored")
        sp.add_argument("--split", choices=["train", "test", "all"],
                        help="the samples scored: train (default: the training split, every metric), test (the "
                             "held-out test split placed by every model: score@k, kNN accuracy and label "
                             "agreement against the training samples) or all (both)")
        sp.add_argument("--models", type=_csv,
                        help=f"comma list of {','.join(MODEL_NAMES)} (default: the study's four; relu_keep "
                             "and the reference maps pca, umap, tsne on request)")
        sp.add_argument("--epochs", type=int, help="default: 100")
        sp.add_argument("--batch-size", type=int, help="default: 100")
        sp.add_argument("--lr", type=float, help="default: 1e-3")
        sp.add_argument("--weight-decay", type=float, help="default: 1e-3")
        sp.add_argument("--k", type=int, help="K, neighbours kept per sample (default: 200)")
        sp.add_argument("--distances", type=_csv, help=f"comma list of {','.join(DISTANCES)} (default: both)")
        sp.add_argument("--seed", type=int, help="default: 0")
        sp.add_argument("--ks", type=lambda t: [int(x) for x in _csv(t)],
                        help="k of the metric tables (default: 5,10,20,50)")

    run = sub.add_parser("run", help="run the study in this process and print its tables")
    study_opts(run)
    common_opts(run, compute=True)
    run.set_defaults(func=c.cmd_run)

    sm = sub.add_parser("submit", help="queue the study for the Celery workers; prints its id")
    study_opts(sm)
    common_opts(sm, compute=False, broker=True)
    sm.set_defaults(func=c.cmd_submit)

    def on_one_experiment(name: str, helptext: str, func, compute: bool) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("experiment", type=int)
        common_opts(sp, compute=compute)
        sp.set_defaults(func=func)
        return sp

    st = on_one_experiment("status", "an experiment's state: stage, epochs, chunks, attempts, error", c.cmd_status,
                           compute=False)
    st.add_argument("--format", choices=["text", "json"], default="text")
    on_one_experiment("cancel", "cancel a queued or running experiment", c.cmd_cancel, compute=False)

    en = sub.add_parser("encoder", help="answer POST /experiments/{id}/encode (new images placed on the maps)")
    common_opts(en, compute=True, broker=True)
    en.set_defaults(func=c.cmd_encoder)

    wk = sub.add_parser("worker", help="start a Celery worker (celery -A worker.celery_app worker ...)")
    wk.add_argument("--queues", type=_csv, help="comma list of control,train,neighbors (default: all)")
    wk.add_argument("--concurrency", "-c", type=int, default=1, help="pool processes (default: 1)")
    wk.add_argument("--name", "-n", default="aeknn@%h", help="worker node name (default: aeknn@%%h)")
    wk.add_argument("--beat", action="store_true", help="also run the sweeper (once per deployment)")
    wk.add_argument("--loglevel", default="info")
    common_opts(wk, compute=True, broker=True)
    wk.set_defaults(func=c.cmd_worker)

    sv = sub.add_parser("serve", help="serve the REST API (uvicorn) over the database")
    sv.add_argument("--host", help="default: AEKNN_HOST or 127.0.0.1")
    sv.add_argument("--port", type=int, help="default: AEKNN_PORT or 8000")
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    common_opts(sv, compute=False, broker=True)
    sv.set_defaults(func=c.cmd_serve)

    swp = sub.add_parser("sweep", help="many seeds and settings as one study: a grid over the study's fields, "
                                       "run here (or queued with --submit); mean and spread over the seeds")
    lists = lambda cast: (lambda t: [cast(x) for x in _csv(t)])  # noqa: E731
    swp.add_argument("--seeds", type=lists(int), help="the seeds, e.g. 0,1,2 (default: the base study's, 0)")
    swp.add_argument("--weight-decay", type=lists(float), help="Adam weight decays, e.g. 1e-3,1e-5,0")
    swp.add_argument("--lr", type=lists(float), help="Adam learning rates, e.g. 1e-3,3e-4")
    swp.add_argument("--epochs", type=lists(int), help="epochs, e.g. 25,100")
    swp.add_argument("--batch-size", type=lists(int), help="batch sizes, e.g. 100,500")
    swp.add_argument("--dataset", type=_csv, help="data sets: mnist,fashion-mnist")
    swp.add_argument("--limit", type=int, help="base: the first N training samples (default: all)")
    swp.add_argument("--models", type=_csv,
                     help=f"base: comma list of {','.join(MODEL_NAMES)} (default: the study's four)")
    swp.add_argument("--k", type=int, help="base: K, neighbours kept per sample (default: 200)")
    swp.add_argument("--distances", type=_csv, help=f"base: comma list of {','.join(DISTANCES)} (default: both)")
    swp.add_argument("--ks", type=lambda t: [int(x) for x in _csv(t)], help="base: the k columns (default: 5,10,20,50)")
    swp.add_argument("--submit", action="store_true", help="queue the experiments for the workers instead")
    swp.add_argument("--resume", type=int, metavar="ID", help="run a sweep's unfinished experiments here")
    swp.add_argument("--status", type=int, metavar="ID", help="a sweep's points and their experiments")
    swp.add_argument("--cancel", type=int, metavar="ID", help="cancel a sweep's pending experiments")
    common_opts(swp, compute=True, broker=True)
    swp.set_defaults(func=c.cmd_sweep)

    sw = sub.add_parser("resend", help="send again whatever the broker lost, for every unfinished experiment")
    common_opts(sw, compute=False, broker=True)
    sw.set_defaults(func=c.cmd_resend)

    dbp = sub.add_parser("db", help="schema migrations (Alembic): upgrade, current, stamp")
    dbp.add_argument("action", choices=["upgrade", "current", "stamp"])
    dbp.add_argument("revision", nargs="?", default="head", help="default: head (the newest)")
    common_opts(dbp, compute=False)
    dbp.set_defaults(func=c.cmd_db)

    ini = sub.add_parser("init", help="apply the migrations and submit the init study once (compose's init)")
    common_opts(ini, compute=False, broker=True)
    ini.set_defaults(func=c.cmd_init)

    on_one_experiment("resume", "continue a stopped experiment where it stopped", c.cmd_resume, compute=True)

    met = sub.add_parser("metrics", help="print the metric tables of a stored experiment")
    met.add_argument("--experiment", type=int, help="the experiment's id (default: the latest succeeded one)")
    met.add_argument("--k", help="the k columns: a comma list, ranges a-b, or all (default: the study's ks)")
    met.add_argument("--format", choices=["table", "csv", "json"], default="table",
                     help="text tables, CSV (one table: --table, or --out FOLDER) or JSON (default: table)")
    met.add_argument("--table", help="only this table: score_at_k, score_at_k_by_label, label_agreement, "
                                     "knn_accuracy, r_nx, trustworthiness, continuity, mrre, lcmc, auc_rnx")
    met.add_argument("--out", help="with --format csv: write one CSV file per table into this folder")
    met.add_argument("--sweep", type=int, metavar="ID", help="a sweep's tables: mean ± sd over its seeds")
    met.add_argument("--backfill", action="store_true",
                     help="store every metric at every k of experiments made before every k or the rank "
                          "measures were (all, or --experiment)")
    common_opts(met, compute=False)
    met.set_defaults(func=c.cmd_metrics)

    ev = sub.add_parser("evaluate", help="score your own codes (any map, N x m) beside an experiment's models")
    ev.add_argument("--codes", required=True, metavar="FILE", action="append",
                    help="a .npy of N x m numbers, one row per sample in the experiment's order (or an .npz "
                         "holding an array named codes); give --codes and --name again for more maps, which "
                         "then share one pass over the pixels for their rank measures")
    ev.add_argument("--name", required=True, action="append",
                    help="the space's name (1 to 32 letters, digits, _ . -), one for each --codes, in order")
    ev.add_argument("--experiment", type=int, help="the experiment's id (default: the latest succeeded one)")
    common_opts(ev, compute=True)
    ev.set_defaults(func=c.cmd_evaluate)

    ls = sub.add_parser("list", help="the stored experiments, newest first: status, models, key settings")
    ls.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    common_opts(ls, compute=False)
    ls.set_defaults(func=c.cmd_list)

    nb = sub.add_parser("neighbors", help="print one sample's nearest neighbours")
    nb.add_argument("sample_id", type=int, help="the sample's id (its index in the training split)")
    nb.add_argument("--space", choices=["original", "encoded"], required=True,
                    help="original: pixel space; encoded: the code space of --model")
    nb.add_argument("--model", help="the model (or uploaded space) whose code space --space encoded reads "
                                    "(default: relu_mse where the experiment has it, else its first)")
    nb.add_argument("--distance", choices=list(DISTANCES), default="l2", help="default: l2")
    nb.add_argument("--k", type=int, default=20, help="how many neighbours, at most the table's K (default: 20)")
    nb.add_argument("--experiment", type=int, help="the experiment's id (default: the latest succeeded one)")
    common_opts(nb, compute=False)
    nb.set_defaults(func=c.cmd_neighbors)
    return p
