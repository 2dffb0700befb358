"""The whole study in this process: one experiment (:func:`run_experiment`, what ``aeknn run`` does) or
several (:func:`run_experiments`, a sweep run here), going through the plan's stages in order."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time

from common.compute.data import Dataset
from common.store import db as db
from common.study import database, plan
from common.study.runtime import Runtime
from common.study.stages import load_config, stored_dataset


class _Run:
    """One experiment run in this process: started (marked running), its stages run in the plan's order
    (all at once, or in two parts on two threads: :func:`run_experiments`), then finished."""

    def __init__(self, rt: Runtime, experiment_id: int) -> None:
        self.rt, self.id = rt, experiment_id
        self.ctx = plan.InProcess(rt, experiment_id, load_config(rt.factory, experiment_id))
        self.t0 = time.perf_counter()

    def start(self) -> None:
        with db.transaction(self.rt.factory) as s:
            exp = db.get_experiment(session=s, experiment_id=self.id)
            db.update_experiment(session=s, experiment_id=self.id, status=db.RUNNING, error=None,
                                 attempts=exp.attempts + 1, started_at=exp.started_at or db.utcnow())
        self.t0 = time.perf_counter()

    def stages(self, names: tuple[str, ...]) -> None:
        """The plan's stages among ``names``, in the plan's order; on any error the experiment is failed."""
        try:
            for st in plan.PLAN:
                if st.name in names:
                    self.ctx.show(st.name)
                    st.run(self.ctx)
        except BaseException as exc:
            self.fail("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            raise

    def fail(self, reason: str) -> None:
        with db.transaction(self.rt.factory) as s:
            db.update_experiment(session=s, experiment_id=self.id, status=db.FAILED, error=reason)

    def finish(self) -> None:
        with db.transaction(self.rt.factory) as s:
            db.record_timing(session=s, experiment_id=self.id, stage="total", seconds=time.perf_counter() - self.t0)
            db.update_experiment(session=s, experiment_id=self.id, status=db.SUCCEEDED, stage="done",
                                 finished_at=db.utcnow())


def run_experiment(rt: Runtime, experiment_id: int, ds: Dataset | None = None) -> None:
    """Run (or resume) every stage of an experiment in this process; mark it succeeded or failed. ``ds``: its
    data, when read already."""
    run = _Run(rt, experiment_id)
    run.ctx.ds = ds
    run.start()
    run.stages(plan.NAMES)
    run.finish()


class _NoteLines:
    """The progress of a tail process: its notes as lines on stderr, without bars that would fight the
    parent's."""

    def __init__(self, experiment_id: int) -> None:
        self.prefix = f"experiment {experiment_id}: "

    def begin(self, stage: str, total: int, unit: str) -> None:
        pass

    def advance(self, n: int = 1, info: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass

    def note(self, text: str) -> None:
        print(self.prefix + text, file=sys.stderr, flush=True)


def _tail_process(url: str, fields: dict, experiment_id: int, elapsed: float) -> None:
    """A process's whole work: one experiment's code tables and metrics, at idle priority (Linux
    ``SCHED_IDLE``: it runs only on cores nothing else wants, and so do the threads it starts)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from common.compute.training import configure_numerics

    configure_numerics()
    factory = database.open_database(url)
    try:
        rt = Runtime(factory=factory, progress=_NoteLines(experiment_id), **fields)
        run = _Run(rt, experiment_id)
        run.t0 -= elapsed  # the experiment's total counts its training too
        run.ctx.ds = stored_dataset(factory, experiment_id)  # as its "data" stage stored it
        run.stages(plan.TAIL)
        run.finish()
    finally:
        database.close(factory)


def _start_tail(rt: Runtime, experiment_id: int, elapsed: float):
    """A process (spawned: no copy of this one's threads or torch state) that runs ``_tail_process``."""
    url = database.url_of(rt.factory)  # through a pipe, never in argv
    fields = {f.name: getattr(rt, f.name) for f in dataclasses.fields(rt)
              if f.name not in ("factory", "progress", "on_epoch_end")}
    proc = multiprocessing.get_context("spawn").Process(
        target=_tail_process, args=(url, fields, experiment_id, elapsed), name=f"aeknn-tail-{experiment_id}",
        daemon=True)
    proc.start()
    return proc


def _separate_processes(rt: Runtime) -> bool:
    """A second process can share the database (not an in-memory SQLite one)."""
    url = rt.factory.kw["bind"].url
    return not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"))


def run_experiments(rt: Runtime, experiment_ids: list[int]) -> None:
    """Several experiments in this process (a sweep), each one's code tables and metrics in a second
    process while the next one trains.

    Training's two stacks leave the cores idle part of the time (their threads take turns at Python's
    GIL). The 2-D tables and metrics (about 35 s an experiment at N = 60,000 on 2 cores) fill those gaps:
    they run in a process of their own at idle priority (Linux ``SCHED_IDLE``). A process, not a thread:
    a thread of this process would share the GIL with training, and one preempted while holding it
    stalls both training threads. Every result is the same as :func:`run_experiment`'s (training runs
    on its own threads, one torch thread each; the tables and metrics are exact). One tail runs at a
    time, and the last experiment's runs here once its training is done. If a tail fails (or its process
    dies), the sweep stops once the experiment beside it has trained, and that experiment is marked failed
    too; ``aeknn sweep --resume`` continues both from what is stored.
    """
    if not _separate_processes(rt):
        for eid in experiment_ids:
            run_experiment(rt, eid)
        return
    head_stages = tuple(n for n in plan.NAMES if n not in plan.TAIL)
    pending, previous = None, None

    def wait_for_previous(run: _Run) -> None:
        pending.join()
        if pending.exitcode == 0:
            return
        with rt.factory() as s:
            exp = db.get_experiment(session=s, experiment_id=previous)
            error = exp.error if exp.status == db.FAILED else None
        if error is None:  # the process died before it could say why (killed, out of memory)
            how = f"signal {-pending.exitcode}" if pending.exitcode < 0 else f"exit status {pending.exitcode}"
            error = f"its tables and metrics process ended with {how}"
            with db.transaction(rt.factory) as s:
                db.update_experiment(session=s, experiment_id=previous, status=db.FAILED, error=error)
        run.fail(f"stopped after training: experiment {previous} failed (resuming continues from what is stored)")
        raise RuntimeError(f"experiment {previous} failed: {error}")

    try:
        for i, eid in enumerate(experiment_ids):
            rt.progress.note(f"experiment {eid}")
            run = _Run(rt, eid)
            run.start()
            run.stages(head_stages)
            if pending is not None:
                wait_for_previous(run)
                pending = None
            if i == len(experiment_ids) - 1:  # nothing left to overlap with: here, at full priority
                run.stages(plan.TAIL)
                run.finish()
            else:
                pending, previous = _start_tail(rt, eid, time.perf_counter() - run.t0), eid
    finally:
        if pending is not None and pending.is_alive():  # interrupted: the tail goes too (it resumes later)
            pending.terminate()
            pending.join()
