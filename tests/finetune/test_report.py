"""Paper-shaped report tables from stored run results."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from finetune.cli import main
from finetune.report import write_report
from finetune.tasks import XNLI_LANGUAGES

SCORES = {  # model -> task -> per-seed {split: score}
    "small": {
        "cola": [{"dev": v} for v in (0.30, 0.40, 0.50)],
        "sst2": [{"dev": v} for v in (0.90, 0.92, 0.94)],
        "mnli": [
            {"dev_matched": m, "dev_mismatched": mm} for m, mm in ((0.80, 0.81), (0.82, 0.83), (0.84, 0.85))
        ],
        "stsb": [{"dev": v} for v in (0.85, 0.86, 0.87)],
    },
    "tiny": {"sst2": [{"dev": 0.80}], "movies": [{"dev": 0.70}, {"dev": 0.72}]},
}


def _store(root, model, task, seed, scores, **extra):
    run_dir = root / task / model / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {"task": task, "run_name": model, "seed": seed, "scores": scores, "eval": {}, "ood": {}} | extra
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for model, tasks in SCORES.items():
        for task, seeds in tasks.items():
            for seed, scores in enumerate(seeds, start=1):
                _store(root, model, task, seed, scores)
    for seed, offset in ((1, 0.0), (2, 0.02)):
        xnli = {
            f"{s}.{lang}": 0.5 + 0.01 * i + offset
            for s in ("dev", "test")
            for i, lang in enumerate(XNLI_LANGUAGES)
        }
        _store(root, "small", "xnli", seed, xnli)
        _store(
            root, "small-ood", "sst2", seed, {"dev": 0.9 + offset}, ood={"imdb": {"accuracy": 0.8 + offset}}
        )
    return root


def test_main_table_cells_and_glue_averages(runs, tmp_path):
    written = write_report([runs], tmp_path / "report")
    md = written["markdown"].read_text()
    small = next(line for line in md.splitlines() if line.startswith("| small |"))
    header = next(line for line in md.splitlines() if line.startswith("| Model |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(cols, [c.strip() for c in small.strip("|").split("|")]))
    assert cols[:6] == ["Model", "CoLA", "SST-2", "STS-B", "MNLI-m", "MNLI-mm"]
    assert (
        cells["CoLA"] == "40.0 (10.0)" and cells["SST-2"] == "92.0 (2.0)" and cells["MNLI-mm"] == "83.0 (2.0)"
    )
    assert cells["XNLI"] == f"{100 * (0.5 + 0.07 + 0.01):.1f} (1.4)"  # mean over languages, then seeds
    task_means = {"cola": 40.0, "sst2": 92.0, "stsb": 86.0, "mnli": (82.0 + 83.0) / 2}
    assert cells["Avg"] == f"{np.mean(list(task_means.values())):.1f}"
    assert cells["Avg w/o CoLA"] == f"{np.mean([v for k, v in task_means.items() if k != 'cola']):.1f}"
    tiny = next(line for line in md.splitlines() if line.startswith("| tiny |"))
    assert "| 80.0 |" in tiny and "71.0 (1.4)" in tiny and "| - |" in tiny  # one seed: no std; missing: -

    rows = {r["model"]: r for r in csv.DictReader(written["glue_csv"].open())}
    assert float(rows["small"]["SST-2_mean"]) == pytest.approx(92.0) and rows["small"]["SST-2_n"] == "3"
    assert float(rows["small"]["SST-2_std"]) == pytest.approx(2.0)
    assert written["png"].stat().st_size > 1000


def test_xnli_and_ood_tables(runs, tmp_path):
    written = write_report([runs], tmp_path / "report")
    xnli = {r["model"]: r for r in csv.DictReader(written["xnli_csv"].open())}
    assert float(xnli["small"]["sw_mean"]) == pytest.approx(100 * (0.5 + 0.09 + 0.01))
    assert float(xnli["small"]["Avg_mean"]) == pytest.approx(100 * (0.5 + 0.07 + 0.01))
    ood = {r["model"]: r for r in csv.DictReader(written["ood_csv"].open())}
    assert float(ood["small-ood"]["sst2->imdb_mean"]) == pytest.approx(81.0)
    assert "## XNLI" in written["markdown"].read_text()


def test_report_cli_and_errors(runs, tmp_path, capsys):
    assert main(["report", str(runs / "sst2"), "--out", str(tmp_path / "r")]) == 0
    assert "| small |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        write_report([tmp_path / "r"], tmp_path / "r2")
