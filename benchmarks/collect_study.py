"""Gather a study's runs (benchmarks/gpu_session.sh parallel) into one JSON and print its table.

  python benchmarks/collect_study.py runs/gpu            # writes runs/gpu/study.json

Each ``$OUT/LABEL`` directory is one `pretrain-distill demo` run; LABEL starts with the student name
(``3L-a``). study.json holds, per student and model, the held-out accuracy of every seed and, for
distilled models, the last logged distillation record (losses, tokens/s).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def collect(out: Path) -> dict:
    study: dict = defaultdict(lambda: defaultdict(dict))
    for metrics in sorted(out.glob("*/finetune/*/*/seed*/metrics.json")):
        label, _, _task, model, seed = metrics.relative_to(out).parts[:5]
        student = label.split("-")[0]
        study[student][model].setdefault("scores", {})[seed] = json.loads(metrics.read_text())["scores"][
            "dev"
        ]
    for log in sorted(out.glob("*/distill*/logs/metrics.jsonl")):
        label, run = log.relative_to(out).parts[:2]
        objective = run.removeprefix("distill-")
        if run == "distill":  # a one-objective demo run: its one distilled model is that objective
            (objective,) = {p.name for p in (out / label).glob("finetune/*/*")} - {"teacher", "random-init"}
        lines = log.read_text().splitlines()
        if lines:
            study[label.split("-")[0]][objective]["distill_last"] = json.loads(lines[-1])
    return study


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu")
    study = collect(out)
    (out / "study.json").write_text(json.dumps(study, indent=1, sort_keys=True))
    print("| student | model | seeds | held-out acc (mean) | std (sample) |")
    print("|---|---|---|---|---|")
    for student, models in sorted(study.items()):
        for model, record in sorted(models.items()):
            scores = list(record.get("scores", {}).values())
            if scores:
                mean = 100 * statistics.mean(scores)
                std = 100 * statistics.stdev(scores) if len(scores) > 1 else 0.0
                print(f"| {student} | {model} | {len(scores)} | {mean:.1f} | {std:.1f} |")


if __name__ == "__main__":
    main()
