"""Loss-curve PNGs of a run (``pretrain-distill plot``): ``<run_dir>/plots/losses.png`` (the total loss and
every term, with the validation curves when logged) and ``training.png`` (learning rate, gradient norm,
tokens/s), read from ``logs/metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pretrain_distill.core.metrics_log import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(records: list[dict], keys: list[str], path: Path, log_scale: bool) -> Path:
    fig = Figure(figsize=(7, 2.4 * len(keys)))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        steps, values = _series(records, key)
        ax.plot(steps, values, linewidth=1.2, label="train")
        val_steps, val_values = _series(records, f"val_{key}")
        if val_values:
            ax.plot(val_steps, val_values, "o-", linewidth=1.2, markersize=3, label="validation")
            ax.legend(loc="upper right", fontsize="small")
        ax.set_ylabel(key)
        if log_scale and values and min(values + val_values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``losses.png`` and ``training.png``; returns the paths written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    records = read_metrics(run_dir / "logs" / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"{run_dir}: no metrics in logs/metrics.jsonl (has the run logged a step?)")
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    present = {k for r in records for k in r}
    loss_keys = ["loss"] + sorted(k for k in present if k.startswith("loss_"))
    written = [_figure(records, [k for k in loss_keys if k in present], out / "losses.png", log_scale=True)]
    other = [k for k in ("lr", "grad_norm", "tokens_per_s") if k in present]
    if other:
        written.append(_figure(records, other, out / "training.png", log_scale=False))
    return written
