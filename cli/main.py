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

from common.settings import Settings, get_settings
from common.store import db as db

log = logging.getLogger("aeknn")


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

    def note(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)


FLAGS = {"database_url": "--db", "data_dir": "--data-dir", "device": "--device", "memory_budget": "--memory-budget",
         "kernel": "--kernel", "broker_url": "--broker"}  # settings a command's flags override


def _settings(args: argparse.Namespace) -> Settings:
    """The settings: the environment's (AEKNN_*), with this command's flags over them, validated the same
    way (a bad --kernel is refused as a bad AEKNN_KERNEL would be, naming the flag)."""
    given = {f: getattr(args, flag.lstrip("-").replace("-", "_"), None) for f, flag in FLAGS.items()}
    try:
        settings = Settings(**{f: v for f, v in given.items() if v is not None})
    except ValidationError as exc:
        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else "setting"
        where = FLAGS[field] if given.get(field) is not None else f"AEKNN_{field.upper()}"
        raise _Usage(f"aeknn: invalid {where}: {e['msg'].removeprefix('Value error, ')}") from None
    from common import secrets

    secrets.install(settings)  # no password of theirs in any message or log line of this process
    args.settings = settings  # for main's messages: which database or broker could not be reached
    return settings


def _factory(settings: Settings):
    engine = db.make_engine(settings.database_url)
    db.init_db(engine)
    return db.session_factory(engine)


def _read_factory(settings: Settings, cmd: str):
    """The database a read command reads: it must exist (a read never creates one, least of all an empty
    file in the wrong folder)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).is_file():
        raise _Usage(f"aeknn {cmd}: no database at {url.database} (--db {settings.database_url}): run `aeknn run` "
                     "first, or point --db (AEKNN_DATABASE_URL) at the database that holds the study")
    return _factory(settings)


class _Usage(Exception):
    """A mistake in how the command was called: one line on stderr, exit 2."""


def _runtime(settings: Settings, factory):
    from common.compute.training import configure_numerics  # imports torch: only for the commands that compute

    configure_numerics()  # before any torch operation starts a thread pool
    from common.study.runtime import Runtime

    return Runtime.from_settings(settings, factory, progress=TqdmProgress())


def _print_tables(factory, experiment_id: int | None, fmt: str = "table", k: str | None = None,
                  table: str | None = None, out: str | None = None) -> None:
    """The study's tables of a finished experiment (the same rows the API serves) at the config's ks or
    ``k``; CSV is one table (``table``) on stdout, or one file per table in the folder ``out``."""
    from common.compute.names import BY_LABEL_K
    from common.study import reads, report

    with factory() as s:
        exp = reads.finished(s, experiment_id)
        ks = reads.parse_ks(k, exp.top_k, "--k") if k else reads.check_ks(list(exp.config["ks"]), exp.top_k)
        tables = report.study_tables(s, exp, ks, min(BY_LABEL_K, exp.top_k))
    names = [t.name for t in tables]
    if table is not None:
        if table not in names:
            raise _Usage(f"aeknn metrics: no table {table!r}; the tables are {', '.join(names)}")
        tables = [t for t in tables if t.name == table]
    if fmt == "json":
        print(json.dumps({"experiment": exp.id, "k": ks, "tables": report.as_dicts(tables)}, indent=1))
    elif fmt == "csv":
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for t in tables:
                (folder / f"{t.name}.csv").write_text(report.csv_of(t))
            print(f"experiment {exp.id}: {len(tables)} tables written to {folder}/ ({', '.join(names)}.csv)")
        elif len(tables) == 1:
            print(report.csv_of(tables[0]), end="")
        else:
            raise _Usage("aeknn metrics: CSV holds one table: name it with --table "
                         f"({', '.join(names)}), or write one file per table with --out FOLDER")
    else:
        print(f"experiment {exp.id}\n")
        print(report.render_text(tables))


def _config(args: argparse.Namespace, cmd: str):
    """The StudyConfig the options ask for, or None after printing what is wrong with them."""
    from common.study.config import StudyConfig

    fields = {"dataset": args.dataset, "limit": args.limit, "models": args.models, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "k": args.k,
              "distances": args.distances, "seed": args.seed, "ks": args.ks}
    try:
        return StudyConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "config"
            print(f"aeknn {cmd}: invalid {where}: {e['msg']}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args, "run")
    if cfg is None:
        return 2
    settings = _settings(args)
    factory = _factory(settings)
    from common.study.run import run_experiment
    from common.study.stages import record_experiment

    experiment_id = record_experiment(factory, cfg)
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
    from common.study.run import run_experiment

    run_experiment(_runtime(settings, factory), args.experiment)
    _print_tables(factory, args.experiment, "table")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from common.study import jobs
    from common.study import submissions as experiments

    cfg = _config(args, "submit")
    if cfg is None:
        return 2
    settings = _settings(args)
    try:
        experiment_id = experiments.submit(_factory(settings), settings, cfg)
    except jobs.BrokerUnavailable as exc:
        print(f"aeknn submit: not submitted: {exc}", file=sys.stderr)
        return 2
    print(experiment_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from common.study import submissions as experiments

    factory = _read_factory(_settings(args), "status")
    with factory() as s:
        info = experiments.describe(s, args.experiment)
    if info is None:
        print(f"aeknn status: no experiment {args.experiment}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(info, indent=1, default=str))
        return 0
    print(f"experiment {info['id']}: {info['status']}  stage: {info['stage'] or '-'}  attempts: {info['attempts']}")
    if info["error"]:
        print(f"error: {info['error']}")
    for m in info["models"]:
        loss = "-" if m["loss"] is None else f"{m['loss']:.4f}"
        print(f"  model {m['name']:<10} epoch {m['epochs_done']}/{m['epochs']}  loss {loss}")
    for t in info["tables"]:
        print(f"  table {t['space']:<10} {t['distance']}  chunks {t['chunks_done']}/{t['chunks_total']}"
              f"{'  complete' if t['complete'] else ''}")
    if info["timings"]:
        print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in info["timings"].items()))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from common.study import submissions as experiments

    status = experiments.cancel(_read_factory(_settings(args), "cancel"), args.experiment)
    if status is None:
        print(f"aeknn cancel: no experiment {args.experiment}", file=sys.stderr)
        return 1
    print(f"experiment {args.experiment}: {status}")
    return 0 if status == "cancelled" else 1


def cmd_worker(args: argparse.Namespace) -> int:
    """Replace this process with a Celery worker (the workers import torch; this CLI does not)."""
    import os

    from common.study.jobs import QUEUES, BrokerUnavailable, check_broker

    settings = _settings(args)
    _factory(settings).kw["bind"].dispose()  # refuse a database at another schema revision, before starting
    try:
        check_broker(settings)  # a worker that could never receive a task says so now, in one line
    except BrokerUnavailable as exc:
        print(f"aeknn worker: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ, AEKNN_DATABASE_URL=settings.database_url, AEKNN_BROKER_URL=settings.broker_url,
               AEKNN_DEVICE=settings.device, AEKNN_MEMORY_BUDGET=str(settings.memory_budget))
    if args.data_dir:
        env["AEKNN_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.concurrency > 1 and not settings.worker_threads:  # share the cores between the pool processes
        env["AEKNN_WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.concurrency))
    queues = ",".join(args.queues or QUEUES)
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues,
           "-c", str(args.concurrency), "-n", args.name, "--loglevel", args.loglevel,
           "--without-gossip", "--without-mingle"]
    if args.beat:  # the sweeper: sends again what the broker lost (one beat per deployment is enough)
        cmd += ["--beat", "--schedule", str(settings.cache_dir / "celerybeat-schedule")]
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _sweep_grid(args: argparse.Namespace) -> tuple[dict, dict]:
    """(base, grid) from the options: a grid field given several comma-separated values varies; the
    other study options are the base."""
    grid_opts = {"seed": args.seeds, "weight_decay": args.weight_decay, "lr": args.lr, "epochs": args.epochs,
                 "batch_size": args.batch_size, "dataset": args.dataset}
    grid = {k: v for k, v in grid_opts.items() if v is not None}
    base = {k: v for k, v in {"limit": args.limit, "models": args.models, "k": args.k,
                              "distances": args.distances, "ks": args.ks}.items() if v is not None}
    return base, grid


def cmd_sweep(args: argparse.Namespace) -> int:
    """A sweep: expand, record, then run its experiments here one after another (or queue them)."""
    from common.study import sweeps

    settings = _settings(args)
    if args.cancel is not None:
        n = sweeps.cancel(_read_factory(settings, "sweep"), args.cancel)
        print(f"sweep {args.cancel}: {n} experiment(s) cancelled")
        return 0
    if args.status is not None:
        with _read_factory(settings, "sweep")() as s:
            info = sweeps.describe(s, args.status)
        print(f"sweep {info['id']}: {info['status']}, {info['done']}/{info['total']} experiments succeeded")
        for p in info["points"]:
            print(f"  {json.dumps(p['config'])}: experiment {p['experiment']} {p['status']}"
                  f"{' (reused)' if p['reused'] else ''}")
        return 0
    factory = _factory(settings)
    if args.resume is not None:
        sweep_id = args.resume
    else:
        base, grid = _sweep_grid(args)
        sweep_id, new = sweeps.create(factory, settings, base, grid, queue=args.submit)
        with factory() as s:
            info = sweeps.describe(s, sweep_id)
        print(f"sweep {sweep_id}: {info['total']} grid points, {len(new)} new experiments "
              f"({info['total'] - len(new)} reused){', queued for the workers' if args.submit else ''}", flush=True)
        if args.submit:
            return 0
    from common.study.run import run_experiments

    rt = _runtime(settings, factory)
    with factory() as s:
        todo = [e.id for _, e in sweeps.points(s, sweep_id)[1] if e.status not in (db.SUCCEEDED, db.CANCELLED)]
    print(f"sweep {sweep_id}: experiments {', '.join(map(str, dict.fromkeys(todo)))}", flush=True)
    run_experiments(rt, list(dict.fromkeys(todo)))
    _print_sweep(factory, sweep_id, "table")
    return 0


def _print_sweep(factory, sweep_id: int, fmt: str, k: str | None = None) -> None:
    """The sweep's aggregated tables: for each grid point, mean ± sd over the seeds."""
    from common.study import reads, sweeps

    with factory() as s:
        info = sweeps.describe(s, sweep_id)
        top = min(int(info["base"]["k"]), 10**9)
        ks = reads.parse_ks(k, top, "--k") if k else list(info["base"]["ks"])
        tables = {m: sweeps.aggregate(s, sweep_id, m, ks, label_k=min(20, top))
                  for m in ("score_at_k", "knn_accuracy", "label_agreement_change", "r_nx")}
    if fmt == "json":
        print(json.dumps({"sweep": info, "k": ks, "tables": tables}, indent=1, default=str))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["metric", *info["grid"], "space", "distance", "k", "mean", "sd", "min", "max", "n"])
        for m, rows in tables.items():
            for r in rows:
                w.writerow([m, *[json.dumps(r["point"].get(f)) if f in r["point"] else "" for f in info["grid"]],
                            r["space"], r["distance"], r["k"], r["mean"], r["sd"], r["min"], r["max"], r["n"]])
        return
    varied = [f for f in info["grid"] if f != "seed"]
    print(f"sweep {sweep_id}: {info['status']}, {info['done']}/{info['total']} experiments; mean ± sd over seeds "
          f"{info['grid'].get('seed', [info['base']['seed']])}\n")
    for m, rows in tables.items():
        print(m)
        lines = [[*varied, "space", "distance", *[f"k={x}" for x in ks], "n"]]
        cells: dict[tuple, dict[int, dict]] = {}  # (point, space, distance) -> k -> row, in the rows' order
        for r in rows:
            cells.setdefault((json.dumps(r["point"], sort_keys=True), r["space"], r["distance"]), {})[r["k"]] = r
        for (pk, space, d), by_k in cells.items():
            point = json.loads(pk)
            lines.append([*[str(point.get(f)) for f in varied], space, d,
                          *[_mean_sd(by_k[x]) if x in by_k else "-" for x in ks],
                          str(max(c["n"] for c in by_k.values()))])
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for j, line in enumerate(lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if j == 0:
                print("  ".join("-" * w for w in widths))
        print()


def cmd_resend(args: argparse.Namespace) -> int:
    """Advance every unfinished experiment once: what the broker lost is sent again."""
    from common.store import db as db_
    from common.study import jobs

    settings = _settings(args)
    factory = _factory(settings)
    app = jobs.broker_client(settings)
    with factory() as s:
        ids = db_.active_experiment_ids(session=s)
    try:
        for experiment_id in ids:
            jobs.send(app, jobs.ADVANCE, experiment_id)
    except jobs.BrokerUnavailable as exc:
        print(f"aeknn resend: {exc}", file=sys.stderr)
        return 2
    print(f"advanced {len(ids)} experiment(s): {ids}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The REST API under uvicorn, over the same database as `aeknn run`."""
    import os

    import uvicorn

    settings = _settings(args)
    _factory(settings)  # create the tables if the database is new
    os.environ["AEKNN_DATABASE_URL"] = settings.database_url  # for uvicorn's worker processes
    os.environ["AEKNN_BROKER_URL"] = settings.broker_url
    get_settings.cache_clear()
    host, port = args.host or settings.host, args.port or settings.port
    base = f"http://{host}:{port}"
    print(f"aeknn API: {base}   docs: {base}/docs   tables: {base}/metrics/score_at_k   "
          f"neighbours: {base}/samples/0/neighbors?space=encoded&k=20", flush=True)
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=args.workers,
                log_level="warning")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations: upgrade, current, stamp."""
    from common.store import migrate

    settings = _settings(args)
    engine = db.make_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        if args.action == "upgrade":
            before = migrate.current(engine)
            after = migrate.upgrade(engine, args.revision)
            print(f"{where}: {'already at' if before == after else f'upgraded from {before} to'} {after}")
        elif args.action == "current":
            status, rev = migrate.state(engine)
            print(f"{where}: {rev or '-'} ({status}; this aeknn's newest revision is {migrate.head()})")
            return 0 if status == "head" else 1
        else:
            migrate.stamp(engine, args.revision)
            print(f"{where}: stamped {migrate.current(engine)}")
    finally:
        engine.dispose()
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Apply the migrations, then submit the init study once (what the compose file's init service
    runs): the same study is never submitted twice, however often this runs."""
    import hashlib

    from common.store import migrate
    from common.study import jobs
    from common.study import submissions as experiments
    from common.study.config import StudyConfig

    settings = _settings(args)
    engine = db.make_engine(settings.database_url)
    rev = migrate.upgrade(engine)
    try:
        cfg = StudyConfig(**settings.init_study)
    except ValidationError as exc:
        print(f"aeknn init: invalid AEKNN_INIT_STUDY: {exc}", file=sys.stderr)
        return 2
    key = "init:" + hashlib.sha256(json.dumps(cfg.as_json(), sort_keys=True).encode()).hexdigest()[:24]
    factory = db.session_factory(engine)
    with factory() as s:
        known = db.experiment_by_key(session=s, idempotency_key=key)
    try:
        experiment_id = experiments.submit(factory, settings, cfg, idempotency_key=key)
    except jobs.BrokerUnavailable as exc:
        print(f"aeknn init: not submitted: {exc}", file=sys.stderr)
        return 2
    what = "already submitted" if known is not None else "submitted"
    print(f"schema at {rev}; init study {what}: experiment {experiment_id}", flush=True)
    return 0


def _mean_sd(row: dict) -> str:
    """``mean ± sd``; one run has no spread to show, so its sd is a dash."""
    return f"{row['mean']:.4f} ± " + (f"{row['sd']:.4f}" if row["sd"] is not None else "-")


def cmd_metrics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.backfill:
        from common.study.scoring import backfill

        done = backfill(_read_factory(settings, "metrics"), args.experiment)
        print(f"every k stored for experiment(s) {', '.join(map(str, done)) or 'none (nothing to fill)'}")
        return 0
    if args.sweep is not None:
        _print_sweep(_read_factory(settings, "metrics"), args.sweep, args.format, args.k)
        return 0
    _print_tables(_read_factory(settings, "metrics"), args.experiment, args.format, args.k, args.table, args.out)
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    from common.study import reads

    factory = _read_factory(_settings(args), "neighbors")
    with factory() as s:
        exp = reads.finished(s, args.experiment)
        found = reads.neighbors(s, exp, args.sample_id, space=args.space, model=args.model, distance=args.distance,
                                k=args.k)
    space = "original" if args.space == "original" else args.model
    print(f"experiment {exp.id}  sample {args.sample_id} (label {found['sample']['label']})  space {space}  "
          f"distance {args.distance}  k {args.k}")
    print(f"{'rank':>4}  {'id':>6}  {'label':>5}  {'distance':>12}")
    for nb in found["neighbors"]:  # distances with their significant digits (a collapsed code's are tiny)
        print(f"{nb['rank']:>4}  {nb['id']:>6}  {nb['label']:>5}  {nb['distance']:>12.6g}")
    return 0


def _database_url(args: argparse.Namespace) -> str:
    """The database URL this command used, without its password."""
    from common.secrets import redact

    settings = getattr(args, "settings", None) or get_settings()
    return redact(settings.database_url)


def _database_problem(args: argparse.Namespace, exc: BaseException) -> str:
    """One line: which database (no password), and the driver's own first line of what went wrong."""
    from common.secrets import scrub

    orig = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
    return scrub(f"the database at {_database_url(args)} cannot be used: {first}")


class _Parser(argparse.ArgumentParser):
    """A mistyped option is one line (what is wrong, and where the help is), exit 2; no usage dump."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from common.compute.names import DATASETS, DISTANCES, MODEL_NAMES

    p = _Parser(prog="aeknn", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
        sp.add_argument("--dataset", choices=sorted(DATASETS), help="default: mnist")
        sp.add_argument("--limit", type=int, help="use the first N training samples (default: all)")
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
    run.set_defaults(func=cmd_run)

    sm = sub.add_parser("submit", help="queue the study for the Celery workers; prints its id")
    study_opts(sm)
    common_opts(sm, compute=False, broker=True)
    sm.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="an experiment's state: stage, epochs, chunks, attempts, error")
    st.add_argument("experiment", type=int)
    st.add_argument("--format", choices=["text", "json"], default="text")
    common_opts(st, compute=False)
    st.set_defaults(func=cmd_status)

    cn = sub.add_parser("cancel", help="cancel a queued or running experiment")
    cn.add_argument("experiment", type=int)
    common_opts(cn, compute=False)
    cn.set_defaults(func=cmd_cancel)

    wk = sub.add_parser("worker", help="start a Celery worker (celery -A worker.celery_app worker ...)")
    wk.add_argument("--queues", type=_csv, help="comma list of control,train,neighbors (default: all)")
    wk.add_argument("--concurrency", "-c", type=int, default=1, help="pool processes (default: 1)")
    wk.add_argument("--name", "-n", default="aeknn@%h", help="worker node name (default: aeknn@%%h)")
    wk.add_argument("--beat", action="store_true", help="also run the sweeper (once per deployment)")
    wk.add_argument("--loglevel", default="info")
    common_opts(wk, compute=True, broker=True)
    wk.set_defaults(func=cmd_worker)

    sv = sub.add_parser("serve", help="serve the REST API (uvicorn) over the database")
    sv.add_argument("--host", help="default: AEKNN_HOST or 127.0.0.1")
    sv.add_argument("--port", type=int, help="default: AEKNN_PORT or 8000")
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    common_opts(sv, compute=False, broker=True)
    sv.set_defaults(func=cmd_serve)

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
    swp.set_defaults(func=cmd_sweep)

    sw = sub.add_parser("resend", help="send again whatever the broker lost, for every unfinished experiment")
    common_opts(sw, compute=False, broker=True)
    sw.set_defaults(func=cmd_resend)

    dbp = sub.add_parser("db", help="schema migrations (Alembic): upgrade, current, stamp")
    dbp.add_argument("action", choices=["upgrade", "current", "stamp"])
    dbp.add_argument("revision", nargs="?", default="head", help="default: head (the newest)")
    common_opts(dbp, compute=False)
    dbp.set_defaults(func=cmd_db)

    ini = sub.add_parser("init", help="apply the migrations and submit the init study once (compose's init)")
    common_opts(ini, compute=False, broker=True)
    ini.set_defaults(func=cmd_init)

    res = sub.add_parser("resume", help="continue a stopped experiment where it stopped")
    res.add_argument("experiment", type=int)
    common_opts(res, compute=True)
    res.set_defaults(func=cmd_resume)

    met = sub.add_parser("metrics", help="print the metric tables of a stored experiment")
    met.add_argument("--experiment", type=int, help="the experiment's id (default: the latest succeeded one)")
    met.add_argument("--k", help="the k columns: a comma list, ranges a-b, or all (default: the study's ks)")
    met.add_argument("--format", choices=["table", "csv", "json"], default="table",
                     help="text tables, CSV (one table: --table, or --out FOLDER) or JSON (default: table)")
    met.add_argument("--table", help="only this table: score_at_k, score_at_k_by_label, label_agreement, "
                                     "knn_accuracy, r_nx")
    met.add_argument("--out", help="with --format csv: write one CSV file per table into this folder")
    met.add_argument("--sweep", type=int, metavar="ID", help="a sweep's tables: mean ± sd over its seeds")
    met.add_argument("--backfill", action="store_true",
                     help="store every k of experiments made before every k was (all, or --experiment)")
    common_opts(met, compute=False)
    met.set_defaults(func=cmd_metrics)

    nb = sub.add_parser("neighbors", help="print one sample's nearest neighbours")
    nb.add_argument("sample_id", type=int, help="the sample's id (its index in the training split)")
    nb.add_argument("--space", choices=["original", "encoded"], required=True,
                    help="original: pixel space; encoded: the code space of --model")
    nb.add_argument("--model", choices=list(MODEL_NAMES), default="relu_mse",
                    help="the model whose code space --space encoded reads (default: relu_mse)")
    nb.add_argument("--distance", choices=list(DISTANCES), default="l2", help="default: l2")
    nb.add_argument("--k", type=int, default=20, help="how many neighbours, at most the table's K (default: 20)")
    nb.add_argument("--experiment", type=int, help="the experiment's id (default: the latest succeeded one)")
    common_opts(nb, compute=False)
    nb.set_defaults(func=cmd_neighbors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step otherwise
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from common.errors import DataError, Invalid, MissingExtra, NotFound, NotReady
    from common.store.migrate import SchemaError

    try:
        return args.func(args)
    except DBAPIError as exc:  # unreachable, refused, not a database: the driver's first line says which
        print(f"aeknn {args.command}: {_database_problem(args, exc)}", file=sys.stderr)
        return 2
    except ArgumentError as exc:  # a URL SQLAlchemy cannot use (an unknown driver, say)
        print(f"aeknn {args.command}: cannot open the database at {_database_url(args)}: {exc}", file=sys.stderr)
        return 2
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except Invalid as exc:
        print(f"aeknn {args.command}: {exc}", file=sys.stderr)
        return 2
    except (NotFound, NotReady) as exc:
        print(f"aeknn {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a setting from the environment (AEKNN_*) that does not validate
        for e in exc.errors():
            print(f"aeknn: invalid setting AEKNN_{str(e['loc'][0]).upper()}: {e['msg']}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"aeknn: data error: {exc}", file=sys.stderr)
        return 1
    except SchemaError as exc:
        print(f"aeknn: {exc}", file=sys.stderr)
        return 1
    except MissingExtra as exc:  # the experiment is kept (failed): resume goes on from what it stored
        print(f"aeknn: {exc}; then `aeknn resume ID` continues the experiment", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aeknn: interrupted; continue with `aeknn resume ID`", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`aeknn metrics | head`): no traceback, and none either when Python flushes
        # stdout at exit, so stdout points at /dev/null from here; the shell's code for a broken pipe
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
