"""What a study is asked to do: one validated config shared by the CLI, the workers and the API.

Closed sets are enums, so bad input is rejected by validation with a message naming the field,
before any work starts. Every default is the seed study's setting (STUDY.md).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator

from common.compute.names import DATASETS, DEFAULT_K, DEFAULT_KS, DISTANCES, MODEL_NAMES, SEED_MODELS, USER_NAME
from common.compute.references import MIN_SAMPLES

ModelName = StrEnum("ModelName", {n: n for n in MODEL_NAMES})
Distance = StrEnum("Distance", {d: d for d in DISTANCES})
DatasetName = StrEnum("DatasetName", {d.replace("-", "_"): d for d in DATASETS})


def error_text(e: dict) -> str:
    """A pydantic error's message as a sentence: without the "Value error, " its own validators get."""
    return str(e.get("msg", "invalid")).removeprefix("Value error, ")


class Split(StrEnum):
    """The samples a study scores: its training split (the study's own), the held-out test split, or both."""

    train = "train"
    test = "test"
    all = "all"


class Space(StrEnum):
    original = "original"
    encoded = "encoded"


MAX_EPOCHS = 10_000
MAX_SAMPLES = 100_000_000  # of your data; a named data set has its own size
MAX_K = 1000  # neighbours per sample: ten 60,000 x 1,000 tables are 5.4 GB already
MAX_KS = 32  # k columns of the metric tables (every k up to K is stored anyway)
MAX_LR = 10.0  # Adam's step size: far above anything that trains
MAX_WEIGHT_DECAY = 1.0  # at 1 every step halves the weights' pull: nothing is left to learn



def _a_number(v: object) -> object:
    if isinstance(v, bool | str):
        raise ValueError(f"must be a number, not {'a boolean' if isinstance(v, bool) else 'a string'}")
    return v


# Numbers are numbers: JSON true/false or "5" is refused, not read as 1/0 or 5. A whole number written
# 2603.0 is an integer (as JSON Schema says), 2603.5 is not. NaN and infinities are refused by name.
Int = Annotated[int, BeforeValidator(_a_number)]
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]


UploadName = Annotated[str, Strict(), Field(pattern=f"^{USER_NAME}$")]
UploadId = Annotated[int, Strict(), Field(ge=1, lt=2**31)]


def _a_data_set(v: object) -> object:
    """A named data set, or an upload's id or name: one message for anything else."""
    if isinstance(v, DatasetName) or (isinstance(v, str) and v in DATASETS):
        return DatasetName(v)
    if isinstance(v, float) and v.is_integer():  # 7.0 is an integer, as JSON Schema says
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31:
        return v
    if isinstance(v, str) and re.fullmatch(USER_NAME, v):
        return v
    raise ValueError(f"{v!r} is not a data set: expected {' or '.join(DATASETS)}, or an uploaded data set's id "
                     "(a whole number from 1) or name (1 to 32 letters, digits, '_', '.' or '-', starting with a "
                     "letter or digit)")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Annotated[DatasetName | UploadId | UploadName, BeforeValidator(_a_data_set), Field(
        description="mnist or fashion-mnist, or an uploaded data set's id or name (POST /datasets)",
    )] = DatasetName.mnist
    data: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="your data instead of a named data set: the path, on the machine the "
                                         "study runs on, of a .npy, .npz or IDX file, a folder of images with "
                                         "one subfolder per class, or a CIFAR-10/100 python folder; or "
                                         "cifar10 / cifar100: found in the data directory or downloaded")
    labels: str | None = Field(default=None, min_length=1, max_length=4096,
                               description="the labels of .npy or IDX data: the path of a second such file")
    limit: Annotated[int, Field(gt=0, le=MAX_SAMPLES),
                     BeforeValidator(_a_number)] | None = Field(
        default=None, description="use the first N training samples")
    split: Split = Field(default=Split.train, description=(
        "the samples scored: train (the study's own, every metric), test (the data's held-out test split: each "
        "test sample placed by every model and its k nearest training samples in pixel space against its k "
        "nearest training codes, as score@k, kNN accuracy and label agreement), or all (both). The models and "
        "tables are always the training split's. The test split: mnist's and fashion-mnist's 10,000, a CIFAR "
        "folder's test batch; limit takes its first N too"))
    models: list[ModelName] = Field(default_factory=lambda: [ModelName(n) for n in SEED_MODELS], min_length=1,
                                    json_schema_extra={"uniqueItems": True},
                                    description="default: the study's four autoencoders; on request relu_keep and the "
                                                "reference maps pca, umap and tsne (the last two need the "
                                                "maps extra where the study runs)")
    epochs: Int = Field(default=100, gt=0, le=MAX_EPOCHS)
    batch_size: Int = Field(default=100, gt=0, le=60_000)
    lr: Float = Field(default=1e-3, gt=0, le=MAX_LR, description="Adam learning rate, in (0, 10]")
    weight_decay: Float = Field(default=1e-3, ge=0, le=MAX_WEIGHT_DECAY, description="Adam weight decay, in [0, 1]")
    k: Int = Field(default=DEFAULT_K, gt=0, le=MAX_K, description="K: neighbours kept per sample (at most 1000)")
    distances: list[Distance] = Field(default_factory=lambda: list(Distance), min_length=1,
                                      json_schema_extra={"uniqueItems": True})
    seed: Int = Field(default=0, ge=0, lt=2**31)
    ks: list[Annotated[int, Field(gt=0, le=MAX_K), BeforeValidator(_a_number)]] = Field(
        default_factory=lambda: list(DEFAULT_KS), min_length=1, max_length=MAX_KS,
        json_schema_extra={"uniqueItems": True},
        description="the k columns of the metric tables shown by default, each <= K (every k up to K is stored)")

    @field_validator("models", "distances", "ks")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a value")
        return v

    @property
    def named(self) -> str | None:
        """The named data set studied (mnist, fashion-mnist), or None for your data or an upload."""
        return self.dataset.value if self.data is None and isinstance(self.dataset, DatasetName) else None

    @property
    def upload(self) -> int | str | None:
        """The uploaded data set studied, by id or name (POST /datasets), or None."""
        return None if isinstance(self.dataset, DatasetName) else self.dataset

    @property
    def n(self) -> int | None:
        """The number of samples studied (None for your data or an upload until it is read: then
        :meth:`check_n`)."""
        if self.named is None:
            return self.limit
        full = DATASETS[self.named][1]
        return full if self.limit is None else min(self.limit, full)

    @property
    def source(self) -> str:
        """What is studied, in words: the data set's name, your data's path, or the upload."""
        if self.data is not None:
            return self.data
        return self.named or f"uploaded data set {self.upload!r}"

    @model_validator(mode="after")
    def _sizes(self) -> StudyConfig:
        if self.data is None and self.labels is not None:
            raise ValueError("labels: only with data (the labels of your .npy or IDX data)")
        if self.data is not None and "dataset" in self.model_fields_set:
            raise ValueError("dataset: give either a named data set or your data (data), not both")
        if self.scores_test and self.upload is not None:
            raise ValueError(f"split: an uploaded data set has no test split; got {self.split.value} (use train, "
                             "or study a named data set or a CIFAR folder, which have one)")
        if self.named is not None:
            full = DATASETS[self.named][1]
            if self.limit is not None and self.limit > full:
                raise ValueError(f"limit: {self.named} has {full} training samples, got {self.limit}")
        if self.n is not None:
            self.check_n(self.n)
        else:
            bad = [k for k in self.ks if not 0 < k <= self.k]
            if bad:
                raise ValueError(f"ks: {bad} must each be in 1..K={self.k}")
        return self

    def check_n(self, n: int) -> None:
        """ValueError unless the study can run on ``n`` samples (more than K; enough for every model)."""
        if self.k >= n:
            raise ValueError(f"k: K={self.k} must be below the number of samples N={n} "
                             "(limit must exceed K)")
        small = [f"{m.value} needs at least {MIN_SAMPLES[m.value]}" for m in self.models
                 if n < MIN_SAMPLES.get(m.value, 0)]
        if small:
            raise ValueError(f"models: {'; '.join(small)} samples, got N={n}")
        bad = [k for k in self.ks if not 0 < k <= min(self.k, n - 2)]
        if bad:
            raise ValueError(f"ks: {bad} must each be in 1..K={self.k} (and below N-1)")

    def as_json(self) -> dict:
        """As stored: a named data set's study as before your data existed (no ``data``, no ``labels``); your
        data's without the named data set's field (its default, unused); a training split's without ``split``."""
        unset = {"data", "labels"} if self.data is None else {"dataset"} | ({"labels"} if self.labels is None
                                                                           else set())
        if self.split == Split.train:  # as stored before the test split existed: the same study, the same config
            unset.add("split")
        return self.model_dump(mode="json", exclude=unset)

    @property
    def scores_train(self) -> bool:
        return self.split != Split.test

    @property
    def scores_test(self) -> bool:
        return self.split != Split.train
