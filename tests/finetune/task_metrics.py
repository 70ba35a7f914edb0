"""The official metrics of a task by name: ``finetune.metrics.metric_values`` with the task's metric
names and kind (what the Trainer's ``compute_metrics`` of a run computes per split)."""

from __future__ import annotations

from finetune.metrics import metric_values
from finetune.tasks import get_task


def compute_metrics(task, predictions, labels) -> dict[str, float]:
    """Official metrics of ``task`` (a task name or :class:`finetune.tasks.TaskSpec`) as fractions."""
    spec = get_task(task) if isinstance(task, str) else task
    return metric_values(spec.metrics, predictions, labels, spec.is_regression)
