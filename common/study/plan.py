"""The study's stages and what each needs, in one place. The in-process run (common/study/stages.py,
``run_experiment``) goes through them in this order; the workers' ``advance`` (worker/pipeline.py) sends
the work of every stage whose needs are done, so pixel tables and training run side by side there.
A new stage is a line here, plus the function that runs it (stages.py) and the one that lists its work
on the broker (worker/pipeline.py). No torch, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # shown as the experiment's stage
    needs: tuple[str, ...]  # stages that must be done before this one starts
    does: str  # what it makes, in words


PLAN: tuple[Stage, ...] = (
    Stage("data", (), "load, check and store the data set (once per data set and N)"),
    Stage("reference maps", ("data",),
          "fit the reference maps asked for (PCA, UMAP, t-SNE; common/compute/references.py): codes, no weights"),
    Stage("pixel tables", ("data",), "the pixel-space neighbour tables (shared by experiments on the same data)"),
    Stage("train", ("data",), "train the autoencoders side by side, with a checkpoint every epoch, then encode"),
    Stage("train keeping", ("pixel tables",),
          "train relu_keep, when asked for, on the stored pixel-space neighbours (common/compute/keeping.py)"),
    Stage("code tables", ("reference maps", "train", "train keeping"),
          "the neighbour tables of each model's 2-D codes"),
    Stage("metrics", ("pixel tables", "code tables"), "every metric at every k, from the stored tables"),
)
NAMES = tuple(s.name for s in PLAN)
# The stages after training: in a sweep run here they run in a second process while the next
# experiment trains (common/study/stages.py, run_experiments). Nothing before them needs them.
TAIL: tuple[str, ...] = ("code tables", "metrics")


def ready(done: set[str]) -> list[Stage]:
    """The stages not done whose needs all are: what may run now."""
    return [s for s in PLAN if s.name not in done and all(n in done for n in s.needs)]


def _check() -> None:
    """The plan's order is one in which every stage comes after what it needs."""
    seen: set[str] = set()
    for s in PLAN:
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise AssertionError(f"stage {s.name!r} comes before {missing} that it needs")
        seen.add(s.name)
    if NAMES[len(NAMES) - len(TAIL):] != TAIL:
        raise AssertionError(f"the tail stages {TAIL} must end the plan")


_check()
