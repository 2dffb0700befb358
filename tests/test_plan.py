"""The stage plan: one list that the in-process run and the workers both follow."""

import pytest

from common.study import plan


def test_the_plan_orders_every_stage_after_what_it_needs():
    assert plan.NAMES == ("data", "reference maps", "pixel tables", "train", "train keeping", "code tables",
                          "metrics")
    assert [s.name for s in plan.ready(set())] == ["data"]
    assert [s.name for s in plan.ready({"data"})] == ["reference maps", "pixel tables", "train"]  # side by side
    maps = {"data", "reference maps"}
    assert [s.name for s in plan.ready(maps | {"train"})] == ["pixel tables"]  # code tables wait for relu_keep
    assert [s.name for s in plan.ready(maps | {"pixel tables"})] == ["train", "train keeping"]
    assert [s.name for s in plan.ready(maps | {"pixel tables", "train", "train keeping"})] == ["code tables"]
    assert [s.name for s in plan.ready({"data", "pixel tables", "train", "train keeping"})] == ["reference maps"]
    assert plan.ready(set(plan.NAMES)) == []


def test_a_stage_placed_before_its_needs_is_refused(monkeypatch):
    monkeypatch.setattr(plan, "PLAN", (plan.Stage("metrics", ("data",), "x", print, print),
                                       plan.Stage("data", (), "y", print, print)))
    with pytest.raises(AssertionError, match="'metrics' comes before \\['data'\\]"):
        plan._check()


def test_one_dispatch_table_holds_every_stage():
    """Every stage carries both of its ways to run; no module dispatches on a stage's name any more (the
    in-process run and the workers each loop over plan.PLAN; tests/test_workers.py checks that the two
    store the same bytes)."""
    import inspect

    from common.study import run
    from worker import pipeline

    assert all(callable(s.run) and callable(s.pending) for s in plan.PLAN)
    for module in (run, pipeline):
        source = inspect.getsource(module)
        named = [name for name in plan.NAMES if f'== "{name}"' in source or f'"{name}": lambda' in source]
        assert not named, f"{module.__name__} dispatches on stage names {named}"


def test_the_tail_that_overlaps_the_next_training_ends_the_plan(monkeypatch):
    assert plan.TAIL == ("code tables", "metrics")  # run_experiments: in a second process in a sweep
    monkeypatch.setattr(plan, "TAIL", ("train", "metrics"))
    with pytest.raises(AssertionError, match="must end the plan"):
        plan._check()
