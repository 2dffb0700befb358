"""Bad study configs are refused before any work starts, with the field named."""

import pytest
from pydantic import ValidationError

from common.study.config import StudyConfig


def test_defaults_are_the_seed_study():
    c = StudyConfig()
    assert c.as_json() == {
        "dataset": "mnist", "limit": None, "models": ["linear_l1", "linear_mse", "relu_l1", "relu_mse"],
        "epochs": 100, "batch_size": 100, "lr": 0.001, "weight_decay": 0.001, "k": 200,
        "distances": ["l1", "l2"], "seed": 0, "ks": [5, 10, 20, 50]}
    assert c.n == 60_000


@pytest.mark.parametrize("fields, where", [
    ({"models": ["relu_mse", "vae"]}, "models"),
    ({"distances": ["cosine"]}, "distances"),
    ({"dataset": "cifar 10"}, "dataset"),  # "cifar10" is a name an upload may have
    ({"epochs": 0}, "epochs"),
    ({"epochs": 10**6}, "epochs"),
    ({"batch_size": -1}, "batch_size"),
    ({"lr": 0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": -0.1}, "lr"),
    ({"weight_decay": float("inf")}, "weight_decay"),
    ({"k": 0}, "k"),
    ({"limit": 0}, "limit"),
    ({"models": []}, "models"),
    ({"models": ["relu_mse", "relu_mse"]}, "models"),
    ({"colour": "red"}, "colour"),
])
def test_bad_field_is_named(fields, where):
    with pytest.raises(ValidationError) as err:
        StudyConfig(**fields)
    assert where in str(err.value)


@pytest.mark.parametrize("fields, msg", [
    ({"limit": 200}, "K=200 must be below the number of samples N=200"),
    ({"limit": 100, "k": 150}, "limit must exceed K"),
    ({"k": 10}, r"ks: \[20, 50\] must each be in 1..K=10"),
    ({"limit": 70_000}, "mnist has 60000 training samples, got 70000"),
])
def test_sizes_that_cannot_work(fields, msg):
    with pytest.raises(ValidationError, match=msg):
        StudyConfig(**fields)


def test_small_study_is_fine():
    c = StudyConfig(limit=2000, epochs=2, models=["relu_mse"], distances=["l2"], k=50, ks=[5, 50])
    assert c.n == 2000
