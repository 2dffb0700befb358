"""What the command line prints: progress bars, the study's tables, a sweep's tables. Progress bars live
here, not in the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("aeknn")


class Usage(Exception):
    """A mistake in how the command was called: one line on stderr, exit 2."""


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


def print_tables(factory, experiment_id: int | None, fmt: str = "table", k: str | None = None,
                  table: str | None = None, out: str | None = None) -> None:
    """The study's tables of a finished experiment (the same rows the API serves) at the config's ks or
    ``k``; CSV is one table (``table``) on stdout, or one file per table in the folder ``out``."""
    from common.study import reads, report

    with factory() as s:
        exp = reads.finished(s, experiment_id)
        ks = reads.parse_ks(k, exp.top_k, "--k") if k else reads.check_ks(list(exp.config["ks"]), exp.top_k)
        tables = report.study_tables(s, exp, ks, reads.by_label_k(exp.top_k))
    names = [t.name for t in tables]
    if table is not None:
        if table not in names:
            raise Usage(f"aeknn metrics: no table {table!r}; the tables are {', '.join(names)}")
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
            raise Usage("aeknn metrics: CSV holds one table: name it with --table "
                         f"({', '.join(names)}), or write one file per table with --out FOLDER")
    else:
        print(f"experiment {exp.id}\n")
        print(report.render_text(tables))


def print_sweep(factory, sweep_id: int, fmt: str, k: str | None = None) -> None:
    """The sweep's aggregated tables: for each grid point, mean ± sd over the seeds."""
    from common.study import reads, report, sweeps

    with factory() as s:
        info = sweeps.describe(s, sweep_id)
        top = reads.top_k(int(info["base"]["k"]), 10**9)
        ks = reads.parse_ks(k, top, "--k") if k else reads.check_ks(list(info["base"]["ks"]), top)
        split = info["base"].get("split", "train")  # the held-out test split's too, where the base scores it
        names = [*(() if split == "test" else ("score_at_k", "knn_accuracy", "label_agreement_change", "r_nx")),
                 *(() if split == "train" else ("test_score_at_k", "test_knn_accuracy"))]
        tables = {m: sweeps.aggregate(s, sweep_id, m, ks, label_k=reads.by_label_k(top)) for m in names}
    if fmt == "json":
        print(json.dumps({"sweep": info, "k": ks, "tables": tables}, indent=1, default=str))
        return
    if fmt == "csv":  # the API's columns (common/study/report.py), each row led by its metric
        print(report.csv_of_many([report.sweep_table(info["grid"], m, rows) for m, rows in tables.items()]), end="")
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
                          *[mean_sd(by_k[x]) if x in by_k else "-" for x in ks],
                          str(max(c["n"] for c in by_k.values()))])
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for j, line in enumerate(lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if j == 0:
                print("  ".join("-" * w for w in widths))
        print()


def mean_sd(row: dict) -> str:
    """``mean ± sd``; one run has no spread to show, so its sd is a dash."""
    return f"{row['mean']:.4f} ± " + (f"{row['sd']:.4f}" if row["sd"] is not None else "-")


def print_experiments(items: list[dict], total: int, fmt: str) -> None:
    """`aeknn list`: one line an experiment (or JSON)."""
    if fmt == "json":
        print(json.dumps({"total": total, "experiments": items}, indent=1))
        return
    print(f"{total} experiment(s){f', the newest {len(items)}' if len(items) < total else ''}")
    cols = ["id", "status", "dataset", "n", "epochs", "seed", "k", "created_at", "models"]
    cells = [cols] + [[",".join(i[c]) if c == "models" else str(i[c]) for c in cols] for i in items]
    widths = [max(len(r[j]) for r in cells) for j in range(len(cols))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
