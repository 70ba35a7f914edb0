"""Student search (``pretrain-distill search``, whose ``--help`` describes it): a short HS distillation of
each candidate shape through the engine, its held-out L_HS and its latency, ranked by the KD-NAS reward
of Appendix C (:func:`kd_nas_reward`). A search directory resumes: finished candidates are kept."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain_distill.core.distributed import launcher_env_scope
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.files import atomic_write_json
from pretrain_distill.data.manifest import MANIFEST, load_manifest
from pretrain_distill.engine.evaluate import evaluate, load_validation_batches, prepared_validation
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
from pretrain_distill.latency import (
    BERT_BASE,
    LatencySettings,
    Shape,
    build_model,
    build_teacher_model,
    measure_latencies,
    parse_shape,
    teacher_config,
)
from pretrain_distill.models import (
    StudentSpec,
    encoder_parameter_count,
    family_for_model_type,
    family_of,
    spec_from_config,
    spec_of,
)
from pretrain_distill.objectives.mappings import reachable_mapping
from pretrain_distill.run_config import RunConfig, load_run_config

#: Appendix C's reward constants: the latency target (a fraction of the teacher's) and the exponent.
LATENCY_TARGET = 0.6
LATENCY_EXPONENT = -0.06

STATE_FILE = "search.json"
TABLE_FILE = "search.md"


def kd_nas_reward(
    hs_loss: float,
    student_ms: float,
    teacher_ms: float,
    target: float = LATENCY_TARGET,
    exponent: float = LATENCY_EXPONENT,
) -> float:
    """Appendix C's eq. 12: ``(1 - L_HS) * (lat(S) / (target * lat(T))) ** exponent``."""
    if student_ms <= 0 or teacher_ms <= 0:
        raise ValueError(f"latencies must be > 0, got student {student_ms}, teacher {teacher_ms}")
    return (1.0 - hs_loss) * (student_ms / (target * teacher_ms)) ** exponent


# ---------------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class Candidate:
    """A candidate as the user wrote it (``name``), its shape ``[L, A, H, F]`` and its family (a model
    type such as ``modernbert``; "" = the student config's, by default the teacher's)."""

    name: str
    shape: tuple[int, int, int, int]
    family: str = ""

    @property
    def key(self) -> str:
        """Directory / record key, one per family and shape: ``L3-A12-H384-F1024``, ``modernbert-L3-...``."""
        shape = "L{}-A{}-H{}-F{}".format(*self.shape)
        return f"{self.family}-{shape}" if self.family else shape

    @property
    def target(self) -> str:
        """The candidate as ``latency`` builds it: ``L,A,H,F`` or ``family:L,A,H,F``."""
        return Shape(self.family, StudentSpec(*self.shape)).text


def check_candidates(texts: Sequence[str], teacher_config: Any, mapping: Any, init: str) -> list[Candidate]:
    """Parse and check every candidate against the teacher; raise :class:`ConfigError` listing each
    rejected one with its reason (nothing is trained when any is rejected)."""

    teacher = spec_of(teacher_config)
    candidates, reasons, seen = [], [], {}
    for text in texts:
        try:
            parsed = parse_shape(text)
            if parsed is None:
                raise ConfigError("not a preset (6L-DistilBERT, 6L, 4L, 3L) nor a shape L,A,H,F")
            spec = parsed.spec
            reachable_mapping(mapping, teacher.layers, spec.layers)
            if init == "teacher":
                if parsed.family and family_for_model_type(parsed.family) is not family_of(teacher_config):
                    raise ConfigError(
                        f"student.init=teacher copies teacher weights: {parsed.family} is another family"
                    )
                if spec.layers > teacher.layers:
                    raise ConfigError(
                        f"student.init=teacher copies teacher layers: {spec.layers} layers > the teacher's "
                        f"{teacher.layers}"
                    )
                if spec.as_list()[1:] != teacher.as_list()[1:]:
                    raise ConfigError(
                        f"student.init=teacher needs the teacher's heads, hidden and ffn "
                        f"{teacher.as_list()[1:]}, got {spec.as_list()[1:]}"
                    )
        except (ValueError, TypeError) as err:  # ConfigError is a ValueError
            reasons.append(f"{text}: {str(err).removeprefix(f'shape {text!r}: ')}")
            continue
        candidate = Candidate(text, tuple(spec.as_list()), parsed.family)
        if candidate.key in seen:
            reasons.append(f"{text}: the same family and shape as {seen[candidate.key]}")
            continue
        seen[candidate.key] = text
        candidates.append(candidate)
    if reasons:
        raise ConfigError(
            f"{len(reasons)} of {len(texts)} candidates rejected (nothing trained): " + "; ".join(reasons)
        )
    if not candidates:
        raise ConfigError("no candidates: give --candidates SPEC ... (presets or L,A,H,F)")
    return candidates


# ---------------------------------------------------------------------------------------------------
# Data: training shards and held-out validation shards


def _write_view(manifest: dict[str, Any], entries: list[dict[str, Any]], source: Path, out: Path) -> Path:
    """A shard directory holding ``entries`` of ``manifest``: a manifest.json and symlinks to the shards."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        link = out / entry["name"]
        if not link.is_symlink():
            link.symlink_to((source / entry["name"]).resolve())
    totals = {k: sum(e[k] for e in entries) for k in ("sequences", "tokens", "documents")}
    view = {**manifest, "shards": entries, "totals": {**manifest.get("totals", {}), **totals}}
    view["view_of"] = str(source.resolve())
    atomic_write_json(out / MANIFEST, view)
    return out


def split_shards(shards: str, val_shards: str | None, holdout: int, out: Path) -> tuple[str, str]:
    """``(train_dir, val_dir)``: ``val_shards`` (by default the held-out split ``prepare`` wrote under
    ``shards``, when there is one) with all of ``shards`` for training, or else the last ``holdout``
    shards of ``shards`` held out (written as manifest views under ``out``)."""

    manifest = load_manifest(shards)
    if not val_shards and (prepared := prepared_validation(shards)) is not None:
        val_shards = str(prepared)
    if val_shards:
        val_tok = load_manifest(val_shards)["tokenizer"].get("sha256")
        if val_tok != manifest["tokenizer"].get("sha256"):
            raise ConfigError(f"--val-shards {val_shards} were prepared with another tokenizer than {shards}")
        return shards, val_shards
    entries = manifest["shards"]
    if not 1 <= holdout < len(entries):
        raise ConfigError(
            f"--holdout {holdout}: {shards} has {len(entries)} shard(s), so at least one must stay for "
            "training and one be held out; prepare them with --validation-fraction F (a held-out split), "
            "prepare more shards (--shard-chars) or give --val-shards"
        )
    source = Path(shards)
    train_dir = _write_view(manifest, entries[:-holdout], source, out / "train")
    val_dir = _write_view(manifest, entries[-holdout:], source, out / "val")
    return str(train_dir), str(val_dir)


# ---------------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class SearchSettings:
    """Everything but the candidates; a resumed search must have the same (its results would differ)."""

    teacher: str
    shards: str
    val_shards: str | None
    holdout: int
    steps: int
    batch: int
    val_batches: int
    mapping: str
    device: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...]
    latency: LatencySettings

    def record(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as read back from JSON


def run_config(
    settings: SearchSettings, data_dir: str, run_dir: Path, candidate: Candidate | None = None
) -> RunConfig:
    """The :class:`RunConfig` of a candidate's distillation: the same for all but shape and run dir
    (``candidate=None``: the shared part only, as the user's configs give the student)."""

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = []
    if candidate is not None:
        shape = ["student.preset=null"] + [
            f"student.{k}={v}" for k, v in zip(("layers", "heads", "hidden", "ffn"), candidate.shape)
        ]
        shape += [f"student.family={candidate.family}"] if candidate.family else []
    overrides = [
        f"teacher.path={settings.teacher}",
        *shape,
        "objective.weights={hs: 1.0}",
        f"objective.mapping={settings.mapping}",
        f"data.shards={data_dir}",
        f"train.output_dir={run_dir}",
        f"train.max_steps={settings.steps}",
        f"train.micro_batch_size={settings.batch}",
        f"train.save_every={max(1, settings.steps // 5)}",
        "train.keep_last=1",
        f"train.log_every={max(1, settings.steps // 20)}",
        f"train.device={device}",
        "train.precision=" + ("bf16" if device == "cuda" else "fp32"),
        "train.deepspeed=deepspeed/zero0.json",
        "train.resume=auto",
        "train.export=false",
    ]
    cfg = load_run_config(list(settings.configs), overrides + list(settings.overrides))
    if set(cfg.objective.weights) != {"hs"}:
        raise ConfigError(
            f"search distils with HS only (the reward reads L_HS), got objective.weights {cfg.objective.weights}"
        )
    if candidate is not None and (
        tuple(spec_from_config(cfg.student).as_list()) != candidate.shape
        or (candidate.family and cfg.student.family != candidate.family)
    ):
        raise ConfigError(
            "the candidates give the student's shape and family: a config file or override may not change them"
        )
    return cfg


def distill_and_validate(cfg, val_dir: str, val_batches: int) -> dict[str, float]:
    """Run (or resume) one candidate's distillation through the engine, then its validation losses."""

    with launcher_env_scope(), PreemptionFlag() as preemption:
        trainer = Trainer(cfg)
        trainer.fit(preemption)
        return held_out_losses(trainer.distiller, val_dir, cfg, val_batches, trainer.device)


def held_out_losses(distiller, val_dir: str, cfg, val_batches: int, device: torch.device) -> dict[str, float]:
    """Each loss term of ``distiller`` (``hs``, ``loss``) averaged over the first ``val_batches``
    micro-batches of ``val_dir``: the engine's validation pass (engine/evaluate.py), in one process."""

    batches = load_validation_batches(val_dir, cfg.train.micro_batch_size, val_batches, seed=cfg.train.seed)
    losses = evaluate(distiller, batches, None, device, cfg.train.seed)
    return {("loss" if k == "val_loss" else k.removeprefix("val_loss_")): v for k, v in losses.items()}


def load_state(out: Path, settings: SearchSettings) -> dict[str, Any]:
    """The search state in ``out`` (a fresh one when there is none); refuses other settings."""
    path = out / STATE_FILE
    if not path.is_file():
        return {"settings": settings.record(), "candidates": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); remove it to start the search over") from err
    saved = state.get("settings", {})
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.record().items() if saved.get(k) != v]
    if diff:
        raise ConfigError(
            f"{out} holds a search with other settings ({'; '.join(diff)}): use another --out, or the same settings"
        )
    return state


def ranked(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished candidates, best reward first."""
    return sorted(state["candidates"].values(), key=lambda r: r["reward"], reverse=True)


def markdown_table(state: dict[str, Any]) -> str:
    """The ranked table of a search state."""
    lines = [
        "| rank | candidate | L, A, H, F | params (M) | val L_HS | latency ms (IQR) | teacher ms | lat(S)/lat(T) "
        "| reward |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(ranked(state), start=1):
        lat, t_lat = r["latency"], r["teacher_latency"]
        lines.append(
            f"| {rank} | {r['name']} | {', '.join(map(str, r['shape']))} | {r['params'] / 1e6:.2f} | "
            f"{r['hs_loss']:.4f} | {lat['median_ms']:.2f} ({lat['iqr_ms']:.2f}) | {t_lat['median_ms']:.2f} | "
            f"{lat['median_ms'] / t_lat['median_ms']:.3f} | {r['reward']:.4f} |"
        )
    s = state["settings"]
    lat = s["latency"]
    lines += [
        "",
        f"Teacher {s['teacher']}. Reward (1 - L_HS) * (lat(S) / ({LATENCY_TARGET} lat(T)))^({LATENCY_EXPONENT}). "
        f"{s['steps']} HS steps ({s['mapping']} mapping) of batch {s['batch']} per candidate; latency on "
        f"{lat['device']}, batch {lat['batch']} x {lat['seq']} tokens, {lat['threads']} thread(s), median of "
        f"{lat['repeats']}, student and teacher interleaved.",
    ]
    return "\n".join(lines) + "\n"


def measure_pair(target: str, teacher: str, settings: LatencySettings) -> dict[str, Any]:
    """Latency of a shape ``L,A,H,F`` or ``family:L,A,H,F`` (random weights) and of the teacher, measured
    interleaved (so both see the same load of a shared machine), and the shape's encoder parameters."""

    student = build_model(target, teacher)
    s_stats, t_stats = measure_latencies([student, build_teacher_model(teacher)], settings)
    return {
        "latency": asdict(s_stats),
        "teacher_latency": asdict(t_stats),
        "params": encoder_parameter_count(student),
    }


def search(settings: SearchSettings, candidate_texts: Sequence[str], out: Path) -> dict[str, Any]:
    """Run (or resume) the search in ``out``; returns the state (see :func:`load_state`)."""

    if settings.teacher == BERT_BASE:
        raise ConfigError(
            f"search distils from a teacher with weights: a model directory or minilm, not {BERT_BASE}"
        )
    shared = run_config(settings, settings.shards, out)
    candidates = check_candidates(
        candidate_texts, teacher_config(settings.teacher), shared.objective.mapping, shared.student.init
    )
    for candidate in candidates:  # every config error before anything is written
        run_config(settings, settings.shards, out, candidate)
    state = load_state(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir = split_shards(settings.shards, settings.val_shards, settings.holdout, out / "data")
    for i, candidate in enumerate(candidates, start=1):
        if candidate.key in state["candidates"]:
            print(f"search: [{i}/{len(candidates)}] {candidate.name}: done before, kept", file=sys.stderr)
            continue
        run_dir = out / "candidates" / candidate.key
        print(
            f"search: [{i}/{len(candidates)}] {candidate.name}: {settings.steps} HS steps in {run_dir}",
            file=sys.stderr,
        )
        cfg = run_config(settings, train_dir, run_dir, candidate)
        losses = distill_and_validate(cfg, val_dir, settings.val_batches)
        measured = measure_pair(candidate.target, settings.teacher, settings.latency)
        hs_loss = losses["hs"]
        if hs_loss >= 1.0:
            print(
                f"search: warning: {candidate.name} has L_HS {hs_loss:.4g} >= 1, so its reward is <= 0",
                file=sys.stderr,
            )
        reward = kd_nas_reward(
            hs_loss, measured["latency"]["median_ms"], measured["teacher_latency"]["median_ms"]
        )
        state["candidates"][candidate.key] = {
            "name": candidate.name,
            "shape": list(candidate.shape),
            "hs_loss": hs_loss,
            "val_losses": losses,
            **measured,
            "reward": reward,
            "run_dir": str(run_dir),
        }
        atomic_write_json(out / STATE_FILE, state)
        (out / TABLE_FILE).write_text(markdown_table(state))
    return state
