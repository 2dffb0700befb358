"""Response shapes (one family per resource). Request bodies reuse common.config.StudyConfig."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BaseModel, Field

from common.study.config import MAX_K, StudyConfig

# The database stores UTC without an offset; RFC 3339 (OpenAPI's date-time) wants one.
UTCDatetime = Annotated[dt.datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=dt.UTC))]


_K = r"(?:1000|[1-9][0-9]{0,2})"  # 1..MAX_K, as a pattern can say it
assert MAX_K == 1000
KsQ = Annotated[str | None, Query(
    max_length=200, pattern=rf"^ *(all|{_K}( *- *{_K})?( *, *{_K}( *- *{_K})?)*) *$",
    description="k values, each at most the experiment's K: a comma list, ranges a-b (1-200) or `all` (1..K); "
                "default: the experiment's own ks")]


ModelQ = Annotated[str | None, Query(
    max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
    description="one of the experiment's models (GET /experiments/{id} lists them); default: relu_mse where "
                "the experiment has it, else its first")]


class ExperimentCreate(StudyConfig):
    """Every field optional: the seed study is the default. Unknown fields are refused."""


class ModelProgress(BaseModel):
    name: str
    kind: str = Field(description="trained (an autoencoder, relu_keep) or reference map (PCA, UMAP, t-SNE)")
    epochs_done: int
    epochs: int = Field(description="the epochs counted by epochs_done (relu_keep: its encoder's)")
    phases: str | None = Field(default=None, description="for a model trained in phases (relu_keep), what they are")
    loss: float | None
    trained: bool


class TableProgress(BaseModel):
    space: str
    distance: str
    complete: bool
    chunks_done: int
    chunks_total: int
    seconds: float | None = Field(description="wall time of the whole table, storing included")
    compute_seconds: float | None = Field(description="computing its rows only (summed over its chunks)")
    path: str | None = Field(description="how it was computed: int8, f32, f32-numpy, sad-avx512, sad-avx2, "
                                         "sad-portable, sparse, torch, kdtree ('a+b' when workers differed)")
    rows_per_s: float | None
    gflops: float | None = Field(description="GFLOP/s of the pixel L2 GEMM")
    gsads_per_s: float | None = Field(description="billions of pixel L1 pair sums per second")


class TaskCounts(BaseModel):
    total: int
    done: int
    retried: int


class SpaceOut(BaseModel):
    name: str
    kind: str = Field(description="trained, reference map, or uploaded (a user's embedding)")
    made_by: str = Field(description="who made it: trained by aeknn, fitted by a library, or uploaded as NAME")
    dim: int = Field(description="the codes' dimension (the map draws more than 2 by their first two principal "
                                 "components)")
    created_at: UTCDatetime | None = Field(description="when it was uploaded (None for the study's models)")
    state: str | None = Field(description="an upload's: queued, scoring, ready or failed (None for the study's)")
    error: str | None


class DatasetOut(BaseModel):
    id: int
    name: str
    n: int = Field(description="samples")
    shape: list[int] = Field(description="one sample's: [H, W], [H, W, C] or [D]")
    classes: int | None = Field(description="distinct labels (null: the data came without labels)")
    sha256: str = Field(description="of the uploaded bytes: the same bytes are one data set")
    created_at: UTCDatetime | None
    links: dict[str, str]


class EmbeddingOut(BaseModel):
    experiment: int
    name: str
    state: str = Field(description="queued, scoring, ready or failed")
    error: str | None
    dim: int
    created_at: UTCDatetime | None
    links: dict[str, str]


class ExperimentPublic(BaseModel):
    id: int
    status: str
    stage: str | None
    error: str | None
    config: dict[str, Any]
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    finished_at: UTCDatetime | None
    timings: dict[str, float]
    attempts: int
    tasks: TaskCounts
    models: list[ModelProgress]
    spaces: list[SpaceOut] = Field(description="every code space: the study's models, then uploaded embeddings")
    tables: list[TableProgress]
    chunks_done: int
    chunks_total: int
    links: dict[str, str]


class ExperimentSummary(BaseModel):
    id: int
    status: str
    stage: str | None
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    finished_at: UTCDatetime | None
    config: dict[str, Any]
    links: dict[str, str]


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary]
    total: int
    page: int
    per_page: int


class SampleRef(BaseModel):
    id: int
    label: int | None = Field(description="null where the data came without labels")


class Neighbor(BaseModel):
    rank: int
    id: int
    label: int | None = Field(description="null where the data came without labels")
    distance: float


class NeighborsOut(BaseModel):
    experiment: int
    sample: SampleRef
    space: str
    model: str | None
    distance: str
    k: int
    neighbors: list[Neighbor]


class SampleOut(BaseModel):
    experiment: int
    id: int
    label: int | None = Field(description="null where the data came without labels")
    codes: dict[str, list[float]]  # model -> [x, y]


class ValuesRow(BaseModel):
    model: str
    distance: str
    values: dict[str, float | None]  # k -> value


class ScoreTable(BaseModel):
    experiment: int
    k: list[int]
    rows: list[ValuesRow]
    split: str = Field(default="train", description="train: the study's samples; test: the held-out test split")


class MrreRow(BaseModel):
    model: str
    distance: str
    direction: str = Field(description="false: the code-space neighbours' rank errors; missing: the pixel-space "
                                       "neighbours'")
    values: dict[str, float | None]  # k -> value


class MrreTable(BaseModel):
    experiment: int
    k: list[int]
    rows: list[MrreRow]


class AucRow(BaseModel):
    model: str
    distance: str
    k_max: int = Field(description="the K the area runs to (k = 1..K)")
    value: float | None


class AucTable(BaseModel):
    experiment: int
    rows: list[AucRow]


class ByLabelRow(BaseModel):
    model: str
    distance: str
    k: int
    by_label: dict[str, float]


class ByLabelTable(BaseModel):
    experiment: int
    k: int
    rows: list[ByLabelRow]
    split: str = Field(default="train", description="train: the study's samples; test: the held-out test split")


class AgreementRow(BaseModel):
    model: str
    distance: str
    k: int
    original_rate: float | None
    encoded_rate: float | None
    change: float | None
    abs_change: float | None


class AgreementTable(BaseModel):
    experiment: int
    k: list[int]
    rows: list[AgreementRow]
    split: str = Field(default="train", description="train: the study's samples; test: the held-out test split")


class SpaceRow(BaseModel):
    space: str
    distance: str
    values: dict[str, float | None]


class AccuracyTable(BaseModel):
    experiment: int
    k: list[int]
    rows: list[SpaceRow]
    split: str = Field(default="train", description="train: the study's samples; test: the held-out test split")


class CodesOut(BaseModel):
    experiment: int
    model: str
    ids: list[int]
    labels: list[int] | None  # null: the data came without labels
    codes: list[list[float]]


class LossOut(BaseModel):
    experiment: int
    losses: dict[str, list[float]]  # model -> mean loss of each epoch


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description="trained, or reference map (a yardstick, like the pixel space)")
    reconstructs: bool = Field(description="whether it has a decoder, so reconstructions to show")


class ModelsOut(BaseModel):
    models: list[ModelInfo]  # every model a study may ask for, in the study's order
    default: str  # the model a read shows when none is named


class HealthOut(BaseModel):
    database: str
    broker: str
