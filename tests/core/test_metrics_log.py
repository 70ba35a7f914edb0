"""The metrics logger: JSON lines + TensorBoard, resume, W&B (offline) and MLflow (local file store)."""

from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import pytest
import torch

from pretrain_distill.core.metrics_log import REPORTERS, MetricsLogger, read_metrics


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's scalars as read back by TensorBoard itself (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, enabled=True) as log:
        log.log(1, {"loss": torch.tensor(2.0), "loss_hs": np.float32(0.5), "lr": 1e-4, "phase": "warmup"})
        assert read_metrics(tmp_path / "metrics.jsonl")[0]["step"] == 1  # flushed per line
        log.log(2, {"loss": float("nan"), "val_loss": 3.0, "val_loss_hs": np.float64(1.5), "note": None})
        log.log(3, {"loss": 1.0, "grad_norm": float("inf"), "tokens": 7})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0] == {"step": 1, "loss": 2.0, "loss_hs": 0.5, "lr": 1e-4, "phase": "warmup"}
    assert math.isnan(records[1].pop("loss"))  # kept in the JSON lines
    assert records[1] == {"step": 2, "val_loss": 3.0, "val_loss_hs": 1.5, "note": None}
    assert records[2] == {"step": 3, "loss": 1.0, "grad_norm": math.inf, "tokens": 7}
    assert type(records[0]["loss"]) is float and type(records[2]["tokens"]) is int
    scalars = _scalars(tmp_path)
    assert sorted(scalars) == ["loss/hs", "loss/total", "train/lr", "train/tokens", "val/hs", "val/total"]
    assert scalars["loss/total"] == [(1, 2.0), (3, 1.0)]  # NaN and inf stay out of TensorBoard
    assert scalars["val/hs"] == [(2, 1.5)]
    assert scalars["train/tokens"] == [(3, 7.0)]


def test_resume_cuts_jsonl_and_tensorboard_back(tmp_path):
    with MetricsLogger(tmp_path, enabled=True) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss"')  # torn line from a killed write
    with MetricsLogger(tmp_path, enabled=True, resume_step=3) as log:
        log.log(4, {"loss": 40.0})
        log.log(5, {"loss": 50.0})
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected
    assert _scalars(tmp_path)["loss/total"] == expected


def test_fresh_start_drops_old_records(tmp_path):
    with MetricsLogger(tmp_path, enabled=True) as log:
        log.log(1, {"loss": 1.0})
    with MetricsLogger(tmp_path, enabled=True) as log:
        log.log(1, {"loss": 9.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 9.0}]


def test_disabled_logger_writes_and_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing either would raise
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with MetricsLogger(tmp_path / "logs", enabled=False, report_to=REPORTERS) as log:
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "logs").exists()


def test_unknown_reporter_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown reporter 'comet' \(allowed: wandb, mlflow\)"):
        MetricsLogger(tmp_path, enabled=True, report_to=["mlflow", "comet"])


@pytest.mark.parametrize(
    ("name", "hint"), [("wandb", "pip install wandb"), ("mlflow", "pip install mlflow-skinny")]
)
def test_missing_package_says_how_to_install(tmp_path, monkeypatch, name, hint):
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ValueError) as err:
        MetricsLogger(tmp_path / "logs", enabled=True, report_to=[name])
    message = str(err.value)
    assert hint in message and "\n" not in message
    assert not (tmp_path / "logs").exists()  # checked before any file is touched


# --- MLflow --------------------------------------------------------------------------------------


@pytest.fixture
def local_mlflow(monkeypatch):
    """No server, no user settings; MLFLOW_ALLOW_FILE_STORE unset but restored after the test."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # records the original value for the undo...
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # ...so the logger's setting is undone too
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def _mlflow_history(mlflow, log_dir, key):
    client = mlflow.tracking.MlflowClient((log_dir / "mlruns").resolve().as_uri())
    run_id = (log_dir / "mlflow_run_id").read_text().strip()
    return client, run_id, [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_local_store_and_resume(tmp_path, local_mlflow, capfd):
    mlflow = local_mlflow
    config = {"model": {"layers": 6, "name": "x" * 7000}, "lr": 1e-4}
    with MetricsLogger(tmp_path, True, report_to=["mlflow"], run_name="demo", config=config) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 1.0 / step, "val_loss": 2.0, "lr": 0.1, "odd key!": 5.0, "gap": math.nan})
    client, first_id, history = _mlflow_history(mlflow, tmp_path, "loss/total")
    assert history == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [m.step for m in client.get_metric_history(first_id, "train/odd key_")] == [1, 2, 3]
    run = client.get_run(first_id)
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    assert set(run.data.metrics) == {"loss/total", "val/total", "train/lr", "train/odd key_"}
    assert run.data.params["model.layers"] == "6" and run.data.params["lr"] == "0.0001"
    assert run.data.params["model.name"] == "x" * 6000  # MLflow's limit
    assert mlflow.active_run() is None

    with MetricsLogger(tmp_path, True, resume_step=2, report_to=["mlflow"], config=config) as log:
        log.log(3, {"loss": 0.25})
    client, resumed_id, history = _mlflow_history(mlflow, tmp_path, "loss/total")
    assert resumed_id == first_id
    assert [step for step, _ in history] == [1, 2, 3, 3]  # MLflow cannot delete the killed run's step 3

    with pytest.raises(RuntimeError), MetricsLogger(tmp_path, True, report_to=["mlflow"]) as log:
        log.log(1, {"loss": 7.0})
        raise RuntimeError("crash")
    client, fresh_id, history = _mlflow_history(mlflow, tmp_path, "loss/total")
    assert fresh_id != first_id and history == [(1, 7.0)]
    assert client.get_run(fresh_id).info.status == "FAILED"
    assert client.get_run(first_id).info.status == "FINISHED"
    assert {e.name for e in client.search_experiments()} >= {"distill-encoders"}
    assert mlflow.active_run() is None
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_mlflow_follows_its_environment(tmp_path, local_mlflow, monkeypatch):
    store = (tmp_path / "elsewhere").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    with MetricsLogger(tmp_path / "logs", True, report_to=["mlflow"]) as log:
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "logs" / "mlruns").exists()
    client = local_mlflow.tracking.MlflowClient(store)
    run = client.get_run((tmp_path / "logs" / "mlflow_run_id").read_text().strip())
    assert client.get_experiment(run.info.experiment_id).name == "mine"


# --- Weights & Biases ----------------------------------------------------------------------------


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline (no account, no network) with its own folders under tmp_path, not $HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_SILENT", "WANDB_CONSOLE"):
        monkeypatch.delenv(name, raising=False)


def _wandb_records(run_dir):
    """The protobuf records of an offline run's ``.wandb`` file (LevelDB log format, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_history(run_dir) -> list[tuple[int, dict[str, float]]]:
    """``(step, {key: value})`` of each logged row (W&B keeps ``a/b`` keys as ``nested_key``)."""
    rows = []
    for r in _wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            rows.append((r.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return rows


def test_wandb_offline_and_resume(tmp_path, offline_wandb, capfd):
    log_dir = tmp_path / "logs"
    with MetricsLogger(log_dir, True, report_to=["wandb"], run_name="demo", config={"a": {"b": 1}}) as log:
        log.log(1, {"loss": 2.0, "lr": 0.1, "phase": "warmup"})
        log.log(2, {"loss": 1.0, "val_loss": math.inf})
    first_id = (log_dir / "wandb_run_id").read_text().strip()
    (first,) = (log_dir / "wandb").glob(f"offline-run-*-{first_id}")
    assert _wandb_history(first) == [(1, {"loss/total": 2.0, "train/lr": 0.1}), (2, {"loss/total": 1.0})]
    (run,) = [r.run for r in _wandb_records(first) if r.WhichOneof("record_type") == "run"]
    assert run.run_id == first_id and run.display_name == "demo" and run.project == "distill-encoders"
    assert {i.key: json.loads(i.value_json) for i in run.config.update}["a"] == {"b": 1}

    with MetricsLogger(log_dir, True, resume_step=2, report_to=["wandb"]) as log:
        log.log(3, {"loss": 0.5})
    assert (log_dir / "wandb_run_id").read_text().strip() == first_id
    runs = sorted(log_dir.glob(f"wandb/offline-run-*-{first_id}*"))  # "-1" when in the same second
    assert len(runs) == 2 and _wandb_history(next(r for r in runs if r != first)) == [
        (3, {"loss/total": 0.5})
    ]

    with MetricsLogger(log_dir, True, report_to=["wandb"]) as log:
        log.log(1, {"loss": 9.0})
    assert (log_dir / "wandb_run_id").read_text().strip() != first_id
    out, err = capfd.readouterr()
    assert out == ""  # commands print their results on stdout
    assert "Run summary" not in err  # quiet: W&B's banner and summary are left out
