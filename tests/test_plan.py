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
    monkeypatch.setattr(plan, "PLAN", (plan.Stage("metrics", ("data",), "x"), plan.Stage("data", (), "y")))
    with pytest.raises(AssertionError, match="'metrics' comes before \\['data'\\]"):
        plan._check()


def test_both_paths_run_every_stage_of_the_plan():
    import inspect

    from common.study import run as stages
    from worker import pipeline

    run = inspect.getsource(stages._Run.stages)
    due = inspect.getsource(pipeline._due)
    for name in plan.NAMES:
        assert f'"{name}":' in run, f"the in-process run has no runner for stage {name!r}"
        assert f'stage == "{name}"' in due, f"the workers' advance lists no work for stage {name!r}"


def test_the_tail_that_overlaps_the_next_training_ends_the_plan(monkeypatch):
    assert plan.TAIL == ("code tables", "metrics")  # run_experiments: in a second process in a sweep
    monkeypatch.setattr(plan, "TAIL", ("train", "metrics"))
    with pytest.raises(AssertionError, match="must end the plan"):
        plan._check()
