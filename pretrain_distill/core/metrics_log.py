"""One metrics logger for both training stages, written by rank 0 only.

Always: JSON lines (``log_dir/metrics.jsonl``, one object per :meth:`MetricsLogger.log` call) and
TensorBoard (``log_dir/tensorboard/``). By option (``report_to``): Weights & Biases and MLflow.

Resume from step ``s``: the JSON lines after ``s`` are dropped and TensorBoard purges the events after
``s``, so a killed-and-resumed run's logs read like an uninterrupted run's. W&B and MLflow continue the
same run (its id is kept in ``log_dir/wandb_run_id`` / ``log_dir/mlflow_run_id``); neither can delete
points, so the steps logged between ``s`` and the kill stay there (W&B ignores re-logged steps, with a
warning; MLflow keeps both values of such a step).

Numbers go to TensorBoard, W&B and MLflow under the same names (``loss/...``, ``val/...``,
``train/...``, see :func:`_tb_tag`; sanitised for MLflow); non-finite numbers, strings and None go to
the JSON lines only.

W&B: project ``$WANDB_PROJECT`` or ``distill-encoders``; W&B's own variables apply (``WANDB_MODE=offline``
works without an account, ``WANDB_ENTITY``, ``WANDB_SILENT``...). It runs quiet (no banner or summary;
its warnings and errors still reach stderr) and without console capture (``WANDB_CONSOLE`` overrides).

MLflow: ``$MLFLOW_TRACKING_URI`` when set, else a local file store under ``log_dir/mlruns`` (a
``file:`` URI: no server, no database, works with ``mlflow-skinny``, which has no SQLAlchemy for a
``sqlite:`` store). MLflow 3 keeps the file store in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true``: for that local store the logger sets this variable in its process
when it is unset (an explicit ``false`` is respected); set it too to browse the store with
``mlflow ui --backend-store-uri log_dir/mlruns``. Experiment ``$MLFLOW_EXPERIMENT_NAME`` or
``distill-encoders``. Only the client API is used: no global active run is left behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from pretrain_distill.core.files import atomic_write_text
from pretrain_distill.core.run_identity import flatten

REPORTERS = ("wandb", "mlflow")
DEFAULT_PROJECT = "distill-encoders"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_INSTALL = {"wandb": "pip install wandb", "mlflow": "pip install mlflow-skinny (or mlflow)"}
_MLFLOW_KEY_MAX = 250  # MLflow's limit on metric and param names
_MLFLOW_PARAMS_PER_BATCH = 100


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line from a killed write is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the records with ``step <= last_step`` (atomically rewritten)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _tb_tag(key: str) -> str:
    """Group loss terms under ``loss/``, validation under ``val/`` and the rest under ``train/``."""
    if key.startswith("val_"):
        return "val/" + ("total" if key == "val_loss" else key.removeprefix("val_loss_"))
    if key == "loss":
        return "loss/total"
    if key.startswith("loss_"):
        return f"loss/{key.removeprefix('loss_')}"
    return f"train/{key}"


def check_report_to(report_to: str | Sequence[str]) -> tuple[str, ...]:
    """The reporter names, deduplicated; ``ValueError`` for a name not in :data:`REPORTERS`."""
    names = (report_to,) if isinstance(report_to, str) else tuple(report_to)
    for name in names:
        if name not in REPORTERS:
            raise ValueError(f"report_to: unknown reporter {name!r} (allowed: {', '.join(REPORTERS)})")
    return tuple(dict.fromkeys(names))


class MetricsLogger:
    """Rank 0's JSON-lines + TensorBoard (+ W&B / MLflow) writer; a complete no-op on other ranks."""

    def __init__(
        self,
        log_dir: str | Path,
        enabled: bool,
        resume_step: int = 0,
        report_to: Sequence[str] = (),
        run_name: str = "",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / METRICS_FILE
        self._file = None
        self._tb = None
        self._reporters: list[_WandbReporter | _MlflowReporter] = []
        names = check_report_to(report_to)
        if not enabled:
            return
        modules = {name: _import_reporter(name) for name in names}  # fail before touching any file
        self.log_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        try:
            self._tb = SummaryWriter(str(self.log_dir / TENSORBOARD_DIR), purge_step=resume_step + 1)
            for name in names:
                reporter = _WandbReporter if name == "wandb" else _MlflowReporter
                self._reporters.append(reporter(modules[name], self.log_dir, resume_step, run_name, config))
        except BaseException:
            self.close(failed=True)
            raise

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append ``{"step": step, **metrics}`` to the JSON lines; its finite numbers to the other sinks."""
        if self._file is None:
            return
        record = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {_tb_tag(k): float(v) for k, v in record.items() if k != "step" and _is_finite_number(v)}
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, step)
        if scalars:
            for reporter in self._reporters:
                reporter.log(step, scalars)

    def close(self, *, failed: bool = False) -> None:
        """Close every sink (W&B / MLflow runs end as failed when ``failed``); idempotent."""
        while self._reporters:
            self._reporters.pop().close(failed)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)


class _WandbReporter:
    """A W&B run, continued on resume through ``log_dir/wandb_run_id``."""

    def __init__(
        self,
        wandb: ModuleType,
        log_dir: Path,
        resume_step: int,
        run_name: str,
        config: Mapping[str, Any] | None,
    ) -> None:
        id_file = log_dir / "wandb_run_id"
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            name=run_name or None,
            dir=str(log_dir),
            config=dict(config) if config else None,
            id=_saved_run_id(id_file, resume_step),  # None: a new run
            resume="allow",
            settings=wandb.Settings(quiet=True, console=os.environ.get("WANDB_CONSOLE", "off")),
        )
        atomic_write_text(id_file, self._run.id + "\n")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)


class _MlflowReporter:
    """An MLflow run (client API only), continued on resume through ``log_dir/mlflow_run_id``."""

    def __init__(
        self,
        mlflow: ModuleType,
        log_dir: Path,
        resume_step: int,
        run_name: str,
        config: Mapping[str, Any] | None,
    ) -> None:
        self._mlflow = mlflow
        self._client = mlflow.tracking.MlflowClient(_mlflow_tracking_uri(log_dir))
        id_file = log_dir / "mlflow_run_id"
        run_id = _saved_run_id(id_file, resume_step)
        if run_id and self._is_live(run_id):
            self._client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._start(run_name, config)
        self.run_id = run_id
        atomic_write_text(id_file, run_id + "\n")

    def _is_live(self, run_id: str) -> bool:
        """Whether the store holds ``run_id`` (not deleted)."""
        try:
            return self._client.get_run(run_id).info.lifecycle_stage == "active"
        except self._mlflow.exceptions.MlflowException:
            return False

    def _start(self, run_name: str, config: Mapping[str, Any] | None) -> str:
        """A new run in the experiment (created when missing), with ``config`` as its params."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
        run_id = self._client.create_run(experiment_id, run_name=run_name or None).info.run_id
        limit = getattr(self._mlflow.utils.validation, "MAX_PARAM_VAL_LENGTH", 500)
        params = [
            self._mlflow.entities.Param(_mlflow_key(key), str(value)[:limit])
            for key, value in flatten(config or {}).items()
        ]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=params[i : i + _MLFLOW_PARAMS_PER_BATCH])
        return run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        metric = self._mlflow.entities.Metric
        metrics = [metric(_mlflow_key(tag), value, stamp, step) for tag, value in scalars.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool) -> None:
        self._client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow metric / param name (alphanumerics, ``_ - . /`` and spaces; no empty,
    ``.`` or ``..`` path segment; at most 250 characters)."""
    parts = [p for p in re.sub(r"[^\w./ -]", "_", name).split("/") if p]
    key = "/".join("_" if p in (".", "..") else p for p in parts)
    return key[:_MLFLOW_KEY_MAX].rstrip("/") or "_"


def _import_reporter(name: str) -> ModuleType:
    """The reporter's package; a one-line ``ValueError`` saying how to install it when missing."""
    try:
        if name == "wandb":
            # wandb is a heavy optional dependency: imported only when report_to names it
            import wandb as module
        else:
            # mlflow is a heavy optional dependency: imported only when report_to names it
            import mlflow as module
    except ImportError as e:
        if e.name != name:
            raise  # installed but broken: MLflow's or W&B's own error says why
        raise ValueError(f"report_to: {name} is not installed; install it with `{_INSTALL[name]}`") from e
    return module


def _mlflow_tracking_uri(log_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the local file store ``log_dir/mlruns`` (allowed, see above)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (log_dir / "mlruns").resolve().as_uri()


def _saved_run_id(path: Path, resume_step: int) -> str | None:
    """The run id kept in ``path`` when resuming (``resume_step > 0``), else None (a new run)."""
    if resume_step > 0 and path.is_file():
        return path.read_text().strip() or None
    return None


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as Python numbers."""
    return value.item() if hasattr(value, "item") else value


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
