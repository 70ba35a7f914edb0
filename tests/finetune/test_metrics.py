"""Official metrics against scikit-learn / scipy on random predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from task_metrics import compute_metrics

from finetune.metrics import task_score
from finetune.tasks import TASKS

rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    "task", ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli", "xnli", "movies"]
)
def test_classification_metrics_match_sklearn(task):
    n_labels = TASKS[task].num_labels
    labels = rng.integers(0, n_labels, 300)
    logits = rng.normal(size=(300, n_labels))
    pred = logits.argmax(-1)
    out = compute_metrics(task, logits, labels)
    reference = {
        "mcc": matthews_corrcoef(labels, pred),
        "f1": f1_score(labels, pred) if n_labels == 2 else None,
        "accuracy": accuracy_score(labels, pred),
    }
    expected_keys = {"cola": {"mcc"}, "mrpc": {"f1", "accuracy"}, "qqp": {"f1", "accuracy"}}.get(
        task, {"accuracy"}
    )
    assert set(out) == expected_keys
    for key, value in out.items():
        assert value == pytest.approx(reference[key], abs=1e-12)
        assert -1 <= value <= 1
    # class ids give the same numbers as logits
    assert compute_metrics(task, pred, labels) == out


def test_stsb_pearson_spearman_match_scipy():
    labels = rng.uniform(0, 5, 200)
    preds = labels + rng.normal(scale=1.5, size=200)
    out = compute_metrics("stsb", preds[:, None], labels)
    assert set(out) == {"pearson", "spearman"}
    assert out["pearson"] == pytest.approx(pearsonr(preds, labels)[0])
    assert out["spearman"] == pytest.approx(spearmanr(preds, labels)[0])
    assert compute_metrics("stsb", preds, labels) == out


def test_known_values_and_score():
    out = compute_metrics("mrpc", [1, 1, 0, 0], [1, 0, 0, 0])
    assert out == {"f1": pytest.approx(2 / 3), "accuracy": 0.75}
    assert task_score(out) == pytest.approx((2 / 3 + 0.75) / 2)
    assert compute_metrics("cola", [1, 0, 1, 0], [1, 0, 1, 0]) == {"mcc": 1.0}


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("nope", [0], [0])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics("sst2", [], [])
