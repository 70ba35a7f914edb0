"""ONNX and int8: any Hugging Face encoder (the exported student, a fine-tuned classifier, a latency
preset) as an ONNX graph through ``torch.onnx.export`` (the ``torch.export``-based exporter), and its
dynamically quantized int8 copy through ONNX Runtime (``quantize_dynamic``: int8 weights of the MatMul /
Gemm layers, one scale per output channel, activations quantized on the fly; per-tensor scales cost the
MiniLM teacher a mean hidden-state cosine of 0.95 instead of 0.99).

The graph's inputs are the tokenizer's (``input_ids``, ``attention_mask``, and ``token_type_ids`` where the
tokenizer gives them), with dynamic batch and sequence axes; its output is the model's first one
(``last_hidden_state`` for an encoder, ``logits`` for a classifier). :func:`compare_on` checks a graph
against the PyTorch model on a padded batch: fp32 agrees within :data:`FP32_TOLERANCE` at every real token.

Optimum's exporter (``optimum-onnx``) needs transformers < 4.58 (checked with transformers 5.25), so the
project uses torch's own exporter; ``onnx``, ``onnxscript`` and ``onnxruntime`` are the ``onnx`` extra.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrain_distill.core.files import atomic_write_json
from pretrain_distill.core.tokenizer_loading import load_tokenizer
from pretrain_distill.export.encoder import student_model, write_tokenizer
from pretrain_distill.export.source import ExportSource

FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"  # Optimum's name for a quantized copy
#: Largest absolute difference allowed between the fp32 graph and PyTorch, at real tokens.
FP32_TOLERANCE = 1e-4
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 18


class _Positional(nn.Module):
    """The model's first output from positional inputs (what the exporter traces)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs)), return_dict=True)[0]


#: The texts of the padded batch an export is checked on (3 to 62 tokens with the MiniLM tokenizer).
CHECK_TEXTS = (
    "A gripping, beautifully acted film.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families.",
    "Tokyo, 1964: the Shinkansen opened nine days before the Olympic Games.",
    "ok",
)


def write_onnx_format(source: ExportSource, out: Path, quantize: bool) -> nn.Module:
    """The ``onnx`` export format: ``model.onnx`` (+ ``model_quantized.onnx``), the config, the tokenizer
    (rewritten for a pruned vocabulary) and ``onnx_report.json`` (agreement with PyTorch on a padded
    batch). Refuses to finish when the fp32 graph disagrees with PyTorch beyond :data:`FP32_TOLERANCE`."""
    model = student_model(source.student_dir, with_mlm_head=False)
    model.config.save_pretrained(out)
    write_tokenizer(source, out)
    tokenizer = load_tokenizer(out)
    names = graph_input_names(tokenizer)
    batch = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    batch = {n: batch[n] for n in names}
    export_onnx(model, {n: v[:2] for n, v in batch.items()}, out / FP32_FILE)
    report = {"tolerance": FP32_TOLERANCE, "check_batch": list(batch["input_ids"].shape)}
    report["fp32"] = compare_on(model, session(out / FP32_FILE), batch).as_dict()
    if not report["fp32"]["max_abs_diff"] <= FP32_TOLERANCE:
        raise RuntimeError(
            f"the ONNX graph differs from PyTorch by {report['fp32']['max_abs_diff']:.3g} "
            f"(> {FP32_TOLERANCE}) on a padded batch: not exported"
        )
    if quantize:
        quantize_int8(out / FP32_FILE, out / INT8_FILE)
        report["int8"] = compare_on(model, session(out / INT8_FILE), batch).as_dict()
    atomic_write_json(out / "onnx_report.json", report)
    return model


def graph_input_names(tokenizer: Any) -> list[str]:
    """The graph's inputs: those of :data:`GRAPH_INPUTS` the tokenizer gives."""
    names = [n for n in GRAPH_INPUTS if n in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(f"tokenizer inputs {tokenizer.model_input_names}: need input_ids and attention_mask")
    return names


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter's progress lines (stdout) and notes (warnings, torch.onnx log) stay off the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path) -> Path:
    """``model`` (eval, fp32, CPU) as one ONNX file at ``path``, traced on ``example`` (a tokenizer's
    batch; batch and sequence axes stay dynamic)."""
    names = list(example)
    model = model.float().cpu().eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            _Positional(model, names),
            tuple(example[n] for n in names),
            input_names=names,
            output_names=[_output_name(model, example)],
            dynamic_shapes={"inputs": tuple({0: batch, 1: seq} for _ in names)},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    return path


def _output_name(model: nn.Module, example: dict[str, torch.Tensor]) -> str:
    with torch.no_grad():
        return next(iter(model(**example, return_dict=True).keys()))


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``fp32_path`` into ``int8_path``."""
    # onnxruntime is the optional `onnx` extra, needed only for ONNX exports and runtimes.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()  # quantize_dynamic advises pre-processing through the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logger.setLevel(level)
    return int8_path


def session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads."""
    # onnxruntime is the optional `onnx` extra, needed only for ONNX exports and runtimes.
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(graph: Any, batch: dict[str, Any]) -> np.ndarray:
    """The graph's output for a tokenizer batch (tensors or arrays; only the graph's inputs are fed)."""
    feeds = {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in graph.get_inputs()}
    return graph.run(None, feeds)[0]


@dataclass(frozen=True)
class Agreement:
    """How an ONNX graph's output agrees with PyTorch's at the real tokens of a padded batch."""

    max_abs_diff: float
    mean_cosine: float  # of the output vectors (hidden states or logits), per real token
    min_cosine: float

    def as_dict(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
        }


def compare_on(model: nn.Module, graph: Any, batch: dict[str, torch.Tensor]) -> Agreement:
    """The graph's output vs the PyTorch model's on ``batch``, at its real tokens (or per row for
    ``[batch, classes]`` logits)."""
    with torch.no_grad():
        reference = model.float().eval()(**batch, return_dict=True)[0].numpy()
    got = run_session(graph, batch)
    if reference.ndim == 3:  # per token: only the real ones (padding positions are never read)
        real = batch["attention_mask"].numpy().astype(bool)
        reference, got = reference[real], got[real]
    cosine = (reference * got).sum(-1) / (
        np.linalg.norm(reference, axis=-1) * np.linalg.norm(got, axis=-1) + 1e-12
    )
    return Agreement(float(np.abs(reference - got).max()), float(cosine.mean()), float(cosine.min()))


def onnx_values(path: Path) -> int:
    """Number of values stored in an ONNX graph's initializers (its weights)."""
    # onnx is the optional `onnx` extra, needed only for ONNX exports.
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer)
