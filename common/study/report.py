"""The study's tables of a finished experiment, read through common/reads.py, as text, CSV or JSON. No torch."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]


TITLES = {
    "score_at_k": "score@k: share of each pixel-space k-neighbourhood kept in the code space",
    "knn_accuracy": "kNN accuracy@k (leave-one-out majority vote, ties to the nearest)",
    "r_nx": "R_NX(k): score@k corrected for chance",
    "label_agreement": "same-label rate of the k neighbours: original, encoded, change (enc - orig), mean |change|",
    "trustworthiness": "trustworthiness T(k): are the code-space neighbours near in pixel space? (1 = all are)",
    "continuity": "continuity C(k): are the pixel-space neighbours near in the code space? (1 = all are)",
    "mrre": "MRRE(k), higher is better: false (the code neighbours' rank errors), missing (the pixel neighbours')",
    "lcmc": "LCMC(k) = score@k - k / (N - 1)",
    "auc_rnx": "AUC of R_NX: its mean over k = 1..K with log-k weights (sum R_NX(k) / k over sum 1 / k)",
}


def values_table(metric: str, rows: list[dict], ks: list[int]) -> Table:
    """score_at_k, r_nx, knn_accuracy, trustworthiness, continuity or lcmc (common/study/reads.py's
    value_rows): a row per space and distance, a column per k."""
    first = "space" if metric == "knn_accuracy" else "model"
    return Table(metric, TITLES[metric], [first, "distance", *[f"k={k}" for k in ks]],
                 [[r["space"], r["distance"], *[r["values"][k] for k in ks]] for r in rows])


def mrre_table(rows: list[dict], ks: list[int]) -> Table:
    """MRRE both ways (reads.mrre_rows): a row per model, distance and direction, a column per k."""
    return Table("mrre", TITLES["mrre"], ["model", "distance", "direction", *[f"k={k}" for k in ks]],
                 [[r["space"], r["distance"], r["direction"], *[r["values"][k] for k in ks]] for r in rows])


def auc_table(rows: list[dict]) -> Table:
    """The AUC of R_NX (reads.auc_rows): one value per model and distance, with the K it runs to."""
    return Table("auc_rnx", TITLES["auc_rnx"], ["model", "distance", "K", "auc_rnx"],
                 [[r["space"], r["distance"], r["k_max"], r["value"]] for r in rows])


def by_label_table(rows: list[dict], k: int) -> Table:
    """score@k by label (reads.by_label_rows): a row per model and distance, with its k, a column per label."""
    labels = sorted({lab for r in rows for lab in r["by_label"]}, key=int)
    return Table("score_at_k_by_label", f"score@{k} by label", ["model", "distance", "k", *labels],
                 [[r["model"], r["distance"], r["k"], *[r["by_label"].get(lab) for lab in labels]] for r in rows])


def agreement_table(rows: list[dict]) -> Table:
    """Both same-label rates, their change and its mean absolute value (reads.agreement_rows)."""
    cols = ["model", "distance", "k", "original_rate", "encoded_rate", "change", "abs_change"]
    return Table("label_agreement", TITLES["label_agreement"], cols, [[r[c] for c in cols] for r in rows])


def study_tables(session, exp, ks: list[int], by_label_k: int) -> list[Table]:
    """The study's tables of a finished experiment (common/study/reads.py), at the k columns ``ks`` and
    score@k by label at ``by_label_k``: the same rows, and the same columns, the API serves."""
    from common.study import reads

    def labelled(split: str) -> list[Table]:
        return [by_label_table(reads.by_label_rows(session, exp, by_label_k, split), by_label_k),
                agreement_table(reads.agreement_rows(session, exp, ks, split)),
                values_table("knn_accuracy", reads.value_rows(session, exp, "knn_accuracy", ks, split), ks)
                ] if exp.labelled else []  # data without labels: no label-based table

    out = []
    if "train" in exp.splits:
        out += [values_table("score_at_k", reads.value_rows(session, exp, "score_at_k", ks), ks),
                *labelled("train"),
                values_table("r_nx", reads.value_rows(session, exp, "r_nx", ks), ks),
                values_table("trustworthiness", reads.value_rows(session, exp, "trustworthiness", ks), ks),
                values_table("continuity", reads.value_rows(session, exp, "continuity", ks), ks),
                mrre_table(reads.mrre_rows(session, exp, ks), ks),
                values_table("lcmc", reads.value_rows(session, exp, "lcmc", ks), ks),
                auc_table(reads.auc_rows(session, exp))]
    if "test" in exp.splits:  # the held-out test split's, named test_<table>
        out += [held_out(t) for t in [values_table("score_at_k", reads.value_rows(session, exp, "score_at_k", ks,
                                                                                  "test"), ks), *labelled("test")]]
    return out


def held_out(table: Table) -> Table:
    """A table of the held-out test split: named test_<name>, its title saying so."""
    title = table.title.replace("leave-one-out majority", "majority")  # a test sample is not among the voters
    return Table(f"test_{table.name}", f"{title} (held-out test split: each test sample against the training "
                                       "samples)", table.columns, table.rows)


def sweep_table(grid: dict[str, list], metric: str, rows: list[dict]) -> Table:
    """One metric of a sweep (common/study/sweeps.py's aggregate): a row per grid point (seeds aside),
    space, distance, k and label (score@k by label), with the mean, sd, min, max and n over the seeds."""
    varied = [f for f in grid if f != "seed"]
    return Table(metric, f"{metric}: mean, sd, min and max over the seeds",
                 [*varied, "space", "distance", "k", "label", "mean", "sd", "min", "max", "n"],
                 [[*[json.dumps(r["point"][f]) for f in varied], r["space"], r["distance"], r["k"], r.get("label"),
                   r["mean"], r["sd"], r["min"], r["max"], r["n"]] for r in rows])


def csv_of_many(tables: list[Table]) -> str:
    """Tables with the same columns as one CSV, each row led by its table's name (column ``metric``)."""
    return csv_of(Table("", "", ["metric", *tables[0].columns], [[t.name, *r] for t in tables for r in t.rows]))


def csv_of(table: Table) -> str:
    """One table as CSV: its columns, then its rows (empty where a value is missing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    w.writerows([["" if c is None else c for c in r] for r in table.rows])
    return buf.getvalue()


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def render_text(tables: list[Table]) -> str:
    out = []
    for t in tables:
        cells = [t.columns, *[[_cell(c) for c in r] for r in t.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(t.columns))]
        out.append(t.title)
        for j, row in enumerate(cells):
            out.append("  ".join(c.rjust(w) if j and i > 1 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
            if j == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    return "\n".join(out)


def as_dicts(tables: list[Table]) -> list[dict[str, Any]]:
    return [asdict(t) for t in tables]
