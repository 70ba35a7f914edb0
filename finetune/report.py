"""Tables shaped like the papers' from stored runs (``finetune report``): one row per model/method, one
column per task, mean (std) over seeds, GLUE averages with and without CoLA, an XNLI per-language table,
an out-of-domain table, CSV copies and a bar chart.

A task's score is the mean of its official metrics (GLUE benchmark convention); MNLI counts once (the
mean of matched and mismatched) in the averages.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from finetune.tasks import GLUE_TASKS, XNLI_LANGUAGES

# (task, split, column title) in the papers' order; other tasks get one column each after these.
GLUE_COLUMNS = [
    ("cola", "dev", "CoLA"),
    ("sst2", "dev", "SST-2"),
    ("mrpc", "dev", "MRPC"),
    ("stsb", "dev", "STS-B"),
    ("qqp", "dev", "QQP"),
    ("mnli", "dev_matched", "MNLI-m"),
    ("mnli", "dev_mismatched", "MNLI-mm"),
    ("qnli", "dev", "QNLI"),
    ("rte", "dev", "RTE"),
    ("wnli", "dev", "WNLI"),
]
Table = dict[str, dict[str, list[float]]]  # row -> column -> per-seed values (x 100)


def load_runs(paths: list[str | Path]) -> list[dict]:
    """Every ``metrics.json`` under ``paths`` (directories searched recursively, files taken as is)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob("metrics.json"))
        else:
            raise FileNotFoundError(f"no such run directory or file: {p}")
    if not files:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, paths))}")
    return [json.loads(f.read_text()) | {"_path": str(f)} for f in files]


def _xnli_average(scores: dict[str, float], split: str = "test") -> float:
    values = [scores[f"{split}.{lang}"] for lang in XNLI_LANGUAGES if f"{split}.{lang}" in scores]
    return float(np.mean(values))


def main_table(runs: list[dict]) -> tuple[Table, list[str]]:
    """Per-seed scores by row (run name) and column, and the ordered column titles."""
    table: Table = defaultdict(lambda: defaultdict(list))
    extra: list[str] = []
    glue_titles = {(t, s): title for t, s, title in GLUE_COLUMNS}
    for r in sorted(runs, key=lambda r: (r["run_name"], r["task"], r["seed"])):
        row = table[r["run_name"]]
        if r["task"] in GLUE_TASKS:
            for split, score in r["scores"].items():
                row[glue_titles[(r["task"], split)]].append(100 * score)
        else:
            title = r["task"].upper() if r["task"] == "xnli" else r["task"]
            score = (
                _xnli_average(r["scores"]) if r["task"] == "xnli" else r["scores"][next(iter(r["scores"]))]
            )
            row[title].append(100 * score)
            extra += [title] if title not in extra else []
    present = {c for row in table.values() for c in row}
    columns = [title for _, _, title in GLUE_COLUMNS if title in present] + extra
    return table, columns


def glue_averages(row: dict[str, list[float]]) -> tuple[float | None, float | None]:
    """GLUE average (with, without CoLA) over the GLUE tasks present (MNLI = mean of m and mm)."""
    per_task: dict[str, list[float]] = defaultdict(list)
    for task, _, title in GLUE_COLUMNS:
        if row.get(title):
            per_task[task].append(float(np.mean(row[title])))
    means = {t: float(np.mean(v)) for t, v in per_task.items()}
    with_cola = float(np.mean(list(means.values()))) if means else None
    without = [v for t, v in means.items() if t != "cola"]
    return with_cola, (float(np.mean(without)) if without else None)


def xnli_table(runs: list[dict]) -> Table:
    """Per-language XNLI test accuracy (x 100) per row, plus ``Avg`` (per-seed mean over languages)."""
    table: Table = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["task"] != "xnli":
            continue
        for lang in XNLI_LANGUAGES:
            table[r["run_name"]][lang].append(100 * r["scores"][f"test.{lang}"])
        table[r["run_name"]]["Avg"].append(100 * _xnli_average(r["scores"]))
    return table


def ood_table(runs: list[dict]) -> tuple[Table, list[str]]:
    """In-domain score and out-of-domain accuracy columns ``task`` and ``task->set`` per row."""
    table: Table = defaultdict(lambda: defaultdict(list))
    columns: list[str] = []
    for r in runs:
        if not r.get("ood"):
            continue
        first = next(iter(r["scores"]))
        cells = {r["task"]: r["scores"][first]} | {
            f"{r['task']}->{k}": v["accuracy"] for k, v in r["ood"].items()
        }
        for col, value in cells.items():
            table[r["run_name"]][col].append(100 * value)
            columns += [col] if col not in columns else []
    return table, columns


def cell(values: list[float] | None) -> str:
    """``mean (std)`` with one decimal; std over seeds (ddof 1), omitted for a single seed."""
    if not values:
        return "-"
    mean = float(np.mean(values))
    return f"{mean:.1f} ({float(np.std(values, ddof=1)):.1f})" if len(values) > 1 else f"{mean:.1f}"


def markdown(table: Table, columns: list[str], averages: bool = False) -> str:
    header = ["Model"] + columns + (["Avg", "Avg w/o CoLA"] if averages else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.items():
        cells = [cell(row.get(c)) for c in columns]
        if averages:
            cells += ["-" if v is None else f"{v:.1f}" for v in glue_averages(row)]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: Table, columns: list[str], path: Path, averages: bool = False) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        extra = ["avg", "avg_without_cola"] if averages else []
        writer.writerow(["model"] + [f"{c}_{s}" for c in columns for s in ("mean", "std", "n")] + extra)
        for name, row in table.items():
            values = []
            for c in columns:
                v = row.get(c) or []
                std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                values += [f"{np.mean(v):.4f}" if v else "", f"{std:.4f}" if v else "", len(v)]
            if averages:
                values += ["" if a is None else f"{a:.4f}" for a in glue_averages(row)]
            writer.writerow([name] + values)
    return path


def bar_chart(table: Table, columns: list[str], path: Path) -> Path:
    """Grouped bars: one group per task column, one bar per row, std error bars."""
    names = list(table)
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(max(6.0, 1.2 * len(columns) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(columns))
    for i, name in enumerate(names):
        row = table[name]
        means = [float(np.mean(row[c])) if row.get(c) else 0.0 for c in columns]
        stds = [float(np.std(row[c], ddof=1)) if len(row.get(c) or []) > 1 else 0.0 for c in columns]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, columns, rotation=30, ha="right")
    ax.set_ylabel("score (x100)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_report(paths: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write the Markdown, CSV and PNG report of the runs under ``paths``; returns the written files."""
    runs = load_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, columns = main_table(runs)
    has_glue = any(r["task"] in GLUE_TASKS for r in runs)
    sections = ["# Fine-tuning results\n", f"{len(runs)} runs; mean (std) over seeds, scores x 100.\n"]
    sections += ["## Tasks\n", markdown(table, columns, averages=has_glue)]
    written = {"glue_csv": write_csv(table, columns, out / "glue.csv", averages=has_glue)}
    xnli = xnli_table(runs)
    if xnli:
        xcols = list(XNLI_LANGUAGES) + ["Avg"]
        sections += ["## XNLI (zero-shot, test accuracy)\n", markdown(xnli, xcols)]
        written["xnli_csv"] = write_csv(xnli, xcols, out / "xnli.csv")
    ood, ocols = ood_table(runs)
    if ood:
        sections += ["## Out-of-domain (accuracy)\n", markdown(ood, ocols)]
        written["ood_csv"] = write_csv(ood, ocols, out / "ood.csv")
    written["markdown"] = out / "report.md"
    written["markdown"].write_text("\n".join(sections))
    written["png"] = bar_chart(table, columns, out / "report.png")
    return written
