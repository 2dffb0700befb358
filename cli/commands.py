"""The ``aeknn`` commands, one function each: arguments are turned into settings and a :class:`StudyConfig`
at once; nothing passes argparse namespaces on into the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from cli.show import TqdmProgress, Usage, print_experiments, print_sweep, print_tables
from common.settings import Settings, get_settings

log = logging.getLogger("aeknn")


FLAGS = {"database_url": "--db", "data_dir": "--data-dir", "device": "--device", "memory_budget": "--memory-budget",
         "kernel": "--kernel", "broker_url": "--broker"}  # settings a command's flags override


def _settings(args: argparse.Namespace) -> Settings:
    """The settings: the environment's (AEKNN_*), with this command's flags over them, validated the same
    way (a bad --kernel is refused as a bad AEKNN_KERNEL would be, naming the flag)."""
    given = {f: getattr(args, flag.lstrip("-").replace("-", "_"), None) for f, flag in FLAGS.items()}
    if given["database_url"] is None:  # aeknn --db x.db metrics: the flag before the command
        given["database_url"] = getattr(args, "db_before", None)
    try:
        settings = Settings(**{f: v for f, v in given.items() if v is not None})
    except ValidationError as exc:
        from common.study.config import error_text

        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else "setting"
        where = FLAGS[field] if given.get(field) is not None else f"AEKNN_{field.upper()}"
        raise Usage(f"aeknn: invalid {where}: {error_text(e)}") from None
    from common import secrets

    secrets.install(settings)  # no password of theirs in any message or log line of this process
    args.settings = settings  # for main's messages: which database or broker could not be reached
    return settings


def _factory(settings: Settings):
    """The database a command writes to (its schema created when it is empty)."""
    from common.study.database import open_database

    return open_database(settings.database_url)


def _read_factory(settings: Settings, cmd: str):
    """The database a read command reads: it must exist and hold a study; a read creates and changes nothing
    (least of all an empty file in the wrong folder)."""
    from common.errors import NotFound
    from common.study.database import open_existing

    try:
        return open_existing(settings.database_url)
    except NotFound as exc:  # a database this command cannot read: exit 2, as any database it cannot use
        raise Usage(f"aeknn {cmd}: {exc}") from None


def _runtime(settings: Settings, factory):
    from common.compute.training import configure_numerics  # imports torch: only for the commands that compute

    configure_numerics()  # before any torch operation starts a thread pool
    from common.study.runtime import Runtime

    return Runtime.from_settings(settings, factory, progress=TqdmProgress())


def _path(given: str | None) -> str | None:
    """A data path as the config stores it: absolute, so the experiment can be resumed from anywhere; a CIFAR
    set asked for by name (cifar10, cifar100) stays its name where no such path is here."""
    from common.compute.sources import CIFAR_NAMES

    if given is None or (given in CIFAR_NAMES and not Path(given).exists()):
        return given
    return str(Path(given).expanduser().absolute())


def _config(args: argparse.Namespace, cmd: str):
    """The StudyConfig the options ask for, or None after printing what is wrong with them."""
    from common.study.config import StudyConfig, error_text

    fields = {"dataset": args.dataset, "data": _path(args.data), "labels": _path(args.labels),
              "limit": args.limit, "split": args.split, "models": args.models, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "k": args.k,
              "distances": args.distances, "seed": args.seed, "ks": args.ks}
    try:
        return StudyConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "config"
            print(f"aeknn {cmd}: invalid {where}: {error_text(e)}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args, "run")
    if cfg is None:
        return 2
    settings = _settings(args)
    ds = None
    if cfg.data is not None:  # your data: read and checked before anything is stored (DataError: exit 1)
        from common.study.datasets import read_data  # numpy only: a bad file fails before torch loads

        ds = read_data(cfg, settings.data_dir, settings.cache_dir)
    if cfg.upload is not None:  # an upload: stored in this database, and large enough (Invalid: exit 2)
        from common.errors import Invalid, NotFound
        from common.study import datasets
        from common.study.database import open_existing

        try:
            stored = open_existing(settings.database_url)
        except NotFound:
            raise Invalid(f"dataset: no uploaded data set {cfg.upload!r} (the database holds none; the named "
                          "ones are mnist, fashion-mnist)") from None
        with stored() as s:
            datasets.check_study(s, cfg)
    factory = _factory(settings)
    from common.study.run import run_experiment
    from common.study.stages import record_experiment

    experiment_id = record_experiment(factory, cfg)
    log.info("experiment %d: %s", experiment_id, cfg.as_json())
    run_experiment(_runtime(settings, factory), experiment_id, ds)
    print_tables(factory, experiment_id, "table")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from common.study import reads

    settings = _settings(args)
    factory = _factory(settings)
    with factory() as s:
        reads.experiment(s, args.experiment)  # NotFound: exit 1, naming it
    from common.study.run import run_experiment

    run_experiment(_runtime(settings, factory), args.experiment)
    print_tables(factory, args.experiment, "table")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from common.study import jobs
    from common.study import submissions as experiments

    cfg = _config(args, "submit")
    if cfg is None:
        return 2
    settings = _settings(args)
    try:
        experiment_id = experiments.submit(_factory(settings), settings, cfg)  # Invalid: an upload not stored
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
        print(f"  model {m['name']:<10} epoch {m['epochs_done']}/{m['epochs']}  loss {loss}"
              + (f"  ({m['phases']})" if m["phases"] else ""))
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


def cmd_encoder(args: argparse.Namespace) -> int:
    """Answer POST /experiments/{id}/encode until stopped (worker/encoder.py)."""
    from worker.encoder import run

    run(_settings(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Replace this process with a Celery worker (the workers import torch; this CLI does not)."""
    import os

    from common.study.jobs import QUEUES, BrokerUnavailable, check_broker

    settings = _settings(args)
    from common.study.database import close

    close(_factory(settings))  # refuse a database at another schema revision, before starting
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
        todo = sweeps.unfinished(s, sweep_id)
    print(f"sweep {sweep_id}: experiments {', '.join(map(str, dict.fromkeys(todo)))}", flush=True)
    run_experiments(rt, list(dict.fromkeys(todo)))
    print_sweep(factory, sweep_id, "table")
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    """Advance every unfinished experiment once: what the broker lost is sent again."""
    from common.study import jobs
    from common.study import submissions as experiments

    settings = _settings(args)
    ids = experiments.active(_factory(settings))
    app = jobs.broker_client(settings)
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
    from common.secrets import redact
    from common.study import database

    settings = _settings(args)
    where = redact(settings.database_url)
    if args.action == "upgrade":
        before, after = database.upgrade(settings.database_url, args.revision)
        print(f"{where}: {'already at' if before == after else f'upgraded from {before} to'} {after}")
    elif args.action == "current":
        status, rev, newest = database.schema_state(settings.database_url)
        print(f"{where}: {rev or '-'} ({status}; this aeknn's newest revision is {newest})")
        return 0 if status == "head" else 1
    else:
        print(f"{where}: stamped {database.stamp(settings.database_url, args.revision)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Apply the migrations, then submit the init study once (what the compose file's init service
    runs): the same study is never submitted twice, however often this runs."""
    import hashlib

    from common.study import database, jobs
    from common.study import submissions as experiments
    from common.study.config import StudyConfig

    settings = _settings(args)
    _, rev = database.upgrade(settings.database_url)
    try:
        cfg = StudyConfig(**settings.init_study)
    except ValidationError as exc:
        print(f"aeknn init: invalid AEKNN_INIT_STUDY: {exc}", file=sys.stderr)
        return 2
    key = "init:" + hashlib.sha256(json.dumps(cfg.as_json(), sort_keys=True).encode()).hexdigest()[:24]
    factory = database.open_database(settings.database_url)
    known = experiments.by_key(factory, key)
    try:
        experiment_id = experiments.submit(factory, settings, cfg, idempotency_key=key)
    except jobs.BrokerUnavailable as exc:
        print(f"aeknn init: not submitted: {exc}", file=sys.stderr)
        return 2
    what = "already submitted" if known is not None else "submitted"
    print(f"schema at {rev}; init study {what}: experiment {experiment_id}", flush=True)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.backfill:
        from common.study.ranking import RankSettings
        from common.study.scoring import backfill

        done = backfill(_read_factory(settings, "metrics"), args.experiment, RankSettings.of(settings))
        filled = ", ".join(map(str, done)) or "none (nothing to fill)"
        print(f"every metric at every k stored for experiment(s) {filled}")
        return 0
    if args.sweep is not None:
        print_sweep(_read_factory(settings, "metrics"), args.sweep, args.format, args.k)
        return 0
    print_tables(_read_factory(settings, "metrics"), args.experiment, args.format, args.k, args.table, args.out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a user's codes beside an experiment's models: stored as the space NAME (its code-space tables
    at the experiment's K for its distances, every metric at every k), then the tables as `aeknn run`
    prints them. Several maps (--codes and --name again) are stored together and share one pass over the
    pixels for their rank measures. Run again with the same files and names, it goes on where it stopped."""
    from common.study import embeddings, reads

    if len(args.codes) != len(args.name):
        raise Usage(f"aeknn evaluate: each --codes needs its --name: {len(args.codes)} --codes and "
                    f"{len(args.name)} --name given")
    settings = _settings(args)
    factory = _read_factory(settings, "evaluate")
    uploads = []
    for path, name in zip(args.codes, args.name, strict=True):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise Usage(f"aeknn evaluate: cannot read --codes {path}: {exc.strerror}") from None
        uploads.append((name, embeddings.read_codes(data, f"--codes {path}"), f"--codes {path}"))
    experiment_id = args.experiment
    if experiment_id is None:
        with factory() as s:
            experiment_id = reads.finished(s, None).id
    embeddings.record_all(factory, experiment_id, uploads)
    from common.study.stages import stage_embeddings

    stage_embeddings(_runtime(settings, factory), experiment_id, args.name)
    print_tables(factory, experiment_id, "table")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The stored experiments, newest first: id, status, stage, data, models, epochs, seed, K, created."""
    from common.study import reads

    with _read_factory(_settings(args), "list")() as s:
        print_experiments(*reads.experiment_lines(s, max(1, min(args.limit, 1000))), args.format)
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    from common.study import reads

    factory = _read_factory(_settings(args), "neighbors")
    with factory() as s:
        exp = reads.finished(s, args.experiment)
        found = reads.neighbors(s, exp, args.sample_id, space=args.space, model=args.model, distance=args.distance,
                                k=args.k)
    space = "original" if args.space == "original" else found["model"]
    print(f"experiment {exp.id}  sample {args.sample_id} (label {found['sample']['label']})  space {space}  "
          f"distance {args.distance}  k {args.k}")
    print(f"{'rank':>4}  {'id':>6}  {'label':>5}  {'distance':>12}")
    for nb in found["neighbors"]:  # distances with their significant digits (a collapsed code's are tiny)
        print(f"{nb['rank']:>4}  {nb['id']:>6}  {nb['label']:>5}  {nb['distance']:>12.6g}")
    return 0


def database_url(args: argparse.Namespace) -> str:
    """The database URL this command used, without its password."""
    from common.secrets import redact

    settings = getattr(args, "settings", None) or get_settings()
    return redact(settings.database_url)


def database_problem(args: argparse.Namespace, exc: BaseException) -> str:
    """One line: which database (no password), and the driver's own first line of what went wrong."""
    from common.secrets import scrub

    orig = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
    return scrub(f"the database at {database_url(args)} cannot be used: {first}")
