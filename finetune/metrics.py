"""Official task metrics (GLUE / XNLI conventions) as fractions in [0, 1].

``metric_values(names, predictions, labels, regression)`` returns the named metrics (a task's
``TaskSpec.metrics``): CoLA Matthews correlation (``mcc``), STS-B Pearson and Spearman correlations, MRPC and QQP binary F1
(positive class 1) and accuracy, every other task accuracy. ``predictions`` may be logits ``[N, C]``
(argmax is taken; regression takes the single column) or class ids / scores ``[N]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRIC_NAMES = ("mcc", "pearson", "spearman", "f1", "accuracy")


def _as_predictions(predictions, regression: bool) -> np.ndarray:
    pred = np.asarray(predictions)
    if pred.ndim == 2:
        pred = pred[:, 0] if regression else pred.argmax(axis=-1)
    if pred.ndim != 1:
        raise ValueError(f"predictions must be [N] or [N, C], got shape {np.shape(predictions)}")
    return pred.astype(np.float64) if regression else pred.astype(np.int64)


def metric_values(names: tuple[str, ...], predictions, labels, regression: bool) -> dict[str, float]:
    """The named metrics of ``predictions`` against ``labels`` (see the module docstring)."""
    pred = _as_predictions(predictions, regression)
    gold = np.asarray(labels, dtype=np.float64 if regression else np.int64)
    if gold.shape != pred.shape:
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    if len(gold) == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")
    functions = {
        "mcc": lambda: matthews_corrcoef(gold, pred),
        "pearson": lambda: pearsonr(pred, gold)[0],
        "spearman": lambda: spearmanr(pred, gold)[0],
        "f1": lambda: f1_score(gold, pred, average="binary", pos_label=1, zero_division=0),
        "accuracy": lambda: accuracy_score(gold, pred),
    }
    unknown = [n for n in names if n not in functions]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")
    return {name: float(np.nan_to_num(functions[name]())) for name in names}


def task_score(metrics: Mapping[str, float]) -> float:
    """One number per task (GLUE benchmark convention): the mean of the task's metrics."""
    if not metrics:
        raise ValueError("no metrics to score")
    return float(np.mean(list(metrics.values())))
