"""Inference latency of students and teacher (``pretrain-distill latency``, whose ``--help`` says how it is
measured): models built from presets, shapes ``L,A,H,F`` (either after a family, ``modernbert:3L``) or
model directories, timed interleaved, each with its ratio to the teacher, as a Markdown table beside the
paper's Table 1. Runtimes: PyTorch eager (``torch``), ONNX Runtime on the exported graph (``onnx``) and on
its dynamically quantized int8 copy (``onnx-int8``), see :mod:`pretrain_distill.export.onnx`."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, BertConfig

from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.console import loading_quietly
from pretrain_distill.core.distributed import require_device
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.export.onnx import export_onnx, quantize_int8, session
from pretrain_distill.models import PRESETS, StudentSpec, build_student, encoder_parameter_count, spec_of
from pretrain_distill.models.families import attention_implementation, family_for_model_type, family_of

#: The paper's CPU latencies, milliseconds, monolingual (Table 1); the teacher is BERT-base.
PAPER_CPU_MS = {"6L-DistilBERT": 33.28, "6L": 11.98, "4L": 9.53, "3L": 5.41, "teacher": 64.91}

BERT_BASE = "bert-base"
RUNTIMES = ("torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class LatencySettings:
    """How a forward pass is timed: device, input shape, CPU threads, warm-up and timed forwards."""

    device: str = "cpu"
    batch: int = 1
    seq: int = 128
    threads: int = 1
    warmup: int = 5
    repeats: int = 30

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"latency device must be cpu or cuda, got {self.device!r}")
        for name in ("batch", "seq", "threads", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"latency {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"latency warmup must be >= 0, got {self.warmup}")
        require_device(self.device, "latency device")


@dataclass(frozen=True)
class LatencyStats:
    """Timings of one model in milliseconds per forward pass."""

    median_ms: float
    iqr_ms: float  # 75th - 25th percentile
    mean_ms: float
    std_ms: float
    repeats: int


def summarize(times_ms: Sequence[float]) -> LatencyStats:
    """Median, inter-quartile range, mean and sample std of per-forward times (ms)."""
    if not times_ms:
        raise ValueError("no timings to summarize")
    values = sorted(times_ms)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return LatencyStats(
        median_ms=statistics.median(values),
        iqr_ms=q3 - q1,
        mean_ms=statistics.fmean(values),
        std_ms=statistics.stdev(values) if len(values) > 1 else 0.0,
        repeats=len(values),
    )


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(model: nn.Module, settings: LatencySettings, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids for ``model`` (all positions valid); refuses sequences longer than its positions."""
    config = model.config
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and settings.seq > max_positions:
        raise ConfigError(
            f"sequence length {settings.seq} exceeds the model's max_position_embeddings {max_positions}"
        )
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (settings.batch, settings.seq), generator=generator)
    device = torch.device(settings.device)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}


def forward_runner(
    model: nn.Module, settings: LatencySettings, runtime: str, workdir: Path, seed: int = 0
) -> Callable[[], Any]:
    """One forward pass of ``model`` on its timing inputs, under ``runtime`` (the ONNX ones export the
    model into ``workdir`` first and run it with ``settings.threads`` ONNX Runtime threads)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"latency runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime != "torch" and settings.device != "cpu":
        raise ConfigError(f"latency runtime {runtime} runs on the CPU: use --device cpu")
    inputs = _inputs(model, settings, seed)
    if runtime == "torch":
        model = model.to(settings.device).eval()
        return lambda: model(**inputs)
    path = workdir / f"model-{id(model)}" / "model.onnx"  # one fp32 export per model, for both ONNX runtimes
    if not path.is_file():
        path.parent.mkdir()
        export_onnx(model, inputs, path)
    if runtime == "onnx-int8":
        path = quantize_int8(path, path.with_name("model_quantized.onnx"))
    graph = session(path, settings.threads)
    feeds = {name: value.numpy() for name, value in inputs.items()}
    return lambda: graph.run(None, feeds)


def measure_latencies(
    models: Sequence[nn.Module], settings: LatencySettings, seed: int = 0, runtime: str = "torch"
) -> list[LatencyStats]:
    """Time each model's forward pass under ``settings`` and ``runtime`` (see :func:`measure_runners`)."""
    with tempfile.TemporaryDirectory(prefix="latency-") as workdir:
        return measure_runners(
            [forward_runner(m, settings, runtime, Path(workdir), seed) for m in models], settings
        )


def measure_runners(runners: Sequence[Callable[[], Any]], settings: LatencySettings) -> list[LatencyStats]:
    """Time each forward pass, interleaved: every round runs each one once, so a slow spell of a shared
    machine hits all of them alike instead of the one measured at the time."""
    sync = torch.cuda.synchronize if settings.device == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in runners]
    rounds = tqdm(range(settings.warmup + settings.repeats), desc="latency", unit="round", leave=False)
    with torch_threads(settings.threads), torch.inference_mode():
        for round_ in rounds:  # the bar (stderr) updates between rounds, outside the timed forwards
            for run, out in zip(runners, times):
                sync()
                start = time.perf_counter()
                run()
                sync()
                if round_ >= settings.warmup:
                    out.append(1000.0 * (time.perf_counter() - start))
    return [summarize(t) for t in times]


# ---------------------------------------------------------------------------------------------------
# Which models: presets, shapes, directories, the teacher


def teacher_config(teacher: str):
    """The teacher's config: ``bert-base`` = BERT-base's shape (``BertConfig()``), else a model path."""
    if teacher == BERT_BASE:
        return BertConfig()
    path = resolve_model_path(teacher)
    if not Path(path).is_dir():
        raise ConfigError(f"teacher {teacher!r}: not {BERT_BASE!r}, 'minilm' or a model directory")
    return AutoConfig.from_pretrained(path)


@dataclass(frozen=True)
class Shape:
    """A student shape to build: its family (a model type; "" = the teacher's) and ``[L, A, H, F]``."""

    family: str
    spec: StudentSpec

    @property
    def text(self) -> str:
        """``family:L,A,H,F`` (or ``L,A,H,F`` in the teacher's family), as the commands accept it."""
        numbers = ",".join(map(str, self.spec.as_list()))
        return f"{self.family}:{numbers}" if self.family else numbers


def parse_shape(text: str) -> Shape | None:
    """A preset name or ``L,A,H,F``, optionally after a family prefix (``modernbert:3,12,384,1024``,
    ``deberta-v2:3L``); None when ``text`` is none of these forms (e.g. a model directory)."""
    family, sep, rest = text.partition(":")
    if sep and "/" not in family:
        try:
            family_for_model_type(family)
        except ValueError as err:
            raise ConfigError(f"shape {text!r}: {err}") from None
    else:
        family, rest = "", text
    if rest in PRESETS:
        return Shape(family, PRESETS[rest])
    parts = rest.split(",")
    if len(parts) != 4:
        if family:
            raise ConfigError(f"shape {text!r}: after {family}: give a preset or L,A,H,F")
        return None
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"shape {text!r}: L,A,H,F must be four integers") from None
    try:
        return Shape(family, StudentSpec(*numbers))
    except ValueError as err:
        raise ConfigError(f"shape {text!r}: {err}") from None


def build_model(target: str, teacher: str) -> nn.Module:
    """The bare encoder ``target`` names: a preset / ``L,A,H,F`` with an optional ``family:`` prefix (random
    weights; the teacher's family by default) or a Hugging Face model directory (its weights)."""
    shape = parse_shape(target)
    if shape is not None:
        return build_student(
            shape.spec, teacher_config(teacher), with_mlm_head=False, family=shape.family or None
        )
    if (Path(target) / "config.json").is_file():
        config = AutoConfig.from_pretrained(target)
        with loading_quietly():  # its bare encoder is timed: an MLM head in the directory is not read
            return AutoModel.from_pretrained(
                target, attn_implementation=attention_implementation(family_of(config))
            )
    raise ConfigError(
        f"model {target!r}: not a preset (6L-DistilBERT, 6L, 4L, 3L), a shape L,A,H,F (each optionally "
        "after a family, modernbert:3,12,384,1024) or a model directory with a config.json"
    )


def build_teacher_model(teacher: str) -> nn.Module:
    """The teacher's bare encoder: BERT-base's shape with random weights, or the model at a path."""
    config = teacher_config(teacher)  # a clear error for a bad path
    attention = attention_implementation(family_of(config))
    if teacher == BERT_BASE:
        return AutoModel.from_config(config, attn_implementation=attention)
    return AutoModel.from_pretrained(resolve_model_path(teacher), attn_implementation=attention)


def shape_of(model: nn.Module) -> list[int] | None:
    """``[L, A, H, F]`` of a supported encoder family, else None."""
    try:
        return spec_of(model.config).as_list()
    except ValueError:
        return None


@dataclass(frozen=True)
class LatencyRow:
    """One model's line of the table."""

    name: str
    shape: list[int] | None
    params: int
    stats: LatencyStats
    ratio: float  # median latency / the teacher's median latency (same runtime)
    runtime: str = "torch"


def latency_rows(
    targets: Sequence[str], teacher: str, settings: LatencySettings, runtimes: Sequence[str] = ("torch",)
) -> list[LatencyRow]:
    """Measure every target and the teacher under each runtime, all interleaved in one loop; each row's
    ratio is to the teacher under the same runtime (rows: runtime by runtime, the teacher last)."""
    models = [(t, build_model(t, teacher)) for t in targets]  # every bad name fails before timing
    models.append(("teacher", build_teacher_model(teacher)))
    with tempfile.TemporaryDirectory(prefix="latency-") as workdir:
        runners = [
            forward_runner(model, settings, runtime, Path(workdir))
            for runtime in runtimes
            for _, model in models
        ]
        stats = measure_runners(runners, settings)
    rows = []
    for r, runtime in enumerate(runtimes):
        block = stats[r * len(models) : (r + 1) * len(models)]
        rows += [
            LatencyRow(
                name, shape_of(m), encoder_parameter_count(m), st, st.median_ms / block[-1].median_ms, runtime
            )
            for (name, m), st in zip(models, block)
        ]
    return rows


def markdown_table(rows: Sequence[LatencyRow], settings: LatencySettings, paper: bool = False) -> str:
    """The table: shape, parameters (M), median / IQR / mean (std) ms, ratio to the teacher; with
    ``paper=True`` also Table 1's CPU ratio for the rows the paper has."""
    header = "| model | runtime | L, A, H, F | params (M) | median ms | IQR ms | mean (std) ms | ratio to teacher |"
    rule = "|---|---|---|---|---|---|---|---|"
    if paper:
        header += " paper CPU ratio |"
        rule += "---|"
    lines = [header, rule]
    for row in rows:
        shape = ", ".join(map(str, row.shape)) if row.shape else "?"
        s = row.stats
        line = (
            f"| {row.name} | {row.runtime} | {shape} | {row.params / 1e6:.1f} | {s.median_ms:.2f} | {s.iqr_ms:.2f} | "
            f"{s.mean_ms:.2f} ({s.std_ms:.2f}) | {row.ratio:.3f} |"
        )
        if paper:
            ms = PAPER_CPU_MS.get(row.name)
            line += f" {ms / PAPER_CPU_MS['teacher']:.3f} |" if ms else " |"
        lines.append(line)
    threads = f", {settings.threads} thread(s)" if settings.device == "cpu" else ""
    lines.append("")
    lines.append(
        f"{settings.device}, batch {settings.batch} x {settings.seq} tokens{threads}, "
        f"{settings.warmup} warm-up + {settings.repeats} timed forwards per model"
    )
    return "\n".join(lines) + "\n"
