"""Validation during distillation: held-out batches, the same masks each time, rank shares that add up
to the one-rank value, val_* logged and plotted, training itself unchanged by it."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from engine_helpers import REPO, tiny_config, tiny_overrides

from pretrain_distill.core.distributed import launcher_env_scope
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.metrics_log import read_metrics
from pretrain_distill.data import DynamicMasker
from pretrain_distill.engine import train
from pretrain_distill.engine.evaluate import evaluate, load_validation_batches, validation_dir
from pretrain_distill.engine.trainer import Trainer
from pretrain_distill.plot import plot_run
from pretrain_distill.run_config import DataConfig, ObjectiveConfig, TeacherConfig
from tests.launch import subprocess_env, torchrun


@pytest.fixture(scope="module")
def held_out_shards(movie_shards):
    """~12 KB of movie-review sentences in 32-token sequences, a third of the documents held out."""
    out, manifest = movie_shards("val_shards", 12000, validation_fraction=0.3)
    assert manifest["validation"]["sequences"] >= 16
    return out


@pytest.fixture(scope="module")
def distiller(tiny_teacher_dir):
    from pretrain_distill.models import build_student_from_config, build_teacher
    from pretrain_distill.objectives import Distiller
    from pretrain_distill.run_config import StudentConfig

    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(path=str(tiny_teacher_dir), dtype="fp32"), torch.device("cpu"))
    student = build_student_from_config(
        StudentConfig(preset=None, layers=2, heads=2, hidden=32, ffn=64), teacher
    )
    return Distiller(ObjectiveConfig(weights={"hs": 1.0, "mlm": 0.5}), student, teacher)


def test_rank_shares_add_up_to_the_one_rank_value_with_the_same_masks(held_out_shards, distiller, tokenizer):
    masker = DynamicMasker(tokenizer)
    cpu = torch.device("cpu")
    path = validation_dir(DataConfig(shards=str(held_out_shards)))
    assert path == held_out_shards / "validation"
    whole = load_validation_batches(path, 4, 5, seed=3)
    assert [i for i, _ in whole] == [0, 1, 2, 3, 4]
    rng_before = torch.get_rng_state()
    distiller.train()
    one_rank = evaluate(distiller, whole, masker, cpu, seed=7)
    assert distiller.training and torch.equal(torch.get_rng_state(), rng_before)
    assert set(one_rank) == {"val_loss", "val_loss_hs", "val_loss_mlm"}
    assert one_rank == evaluate(distiller, whole, masker, cpu, seed=7)  # same batches, same masks
    assert one_rank != evaluate(distiller, whole, masker, cpu, seed=8)  # the seed picks the masks
    expected = 0.5 * one_rank["val_loss_mlm"] + one_rank["val_loss_hs"]
    assert one_rank["val_loss"] == pytest.approx(expected, rel=1e-6)

    shares = [load_validation_batches(path, 4, 5, rank=r, world_size=2, seed=3) for r in (0, 1)]
    assert [i for i, _ in shares[0]] == [0, 2, 4] and [i for i, _ in shares[1]] == [1, 3]
    other = {}

    def keep(vector):
        other["sums"] = vector.clone()
        return vector

    evaluate(distiller, shares[1], masker, cpu, seed=7, reduce=keep)
    two_ranks = evaluate(distiller, shares[0], masker, cpu, seed=7, reduce=lambda v: v + other["sums"])
    assert two_ranks == pytest.approx(one_rank, rel=1e-6)


def test_bad_validation_settings_are_config_errors(held_out_shards, tmp_path):
    assert validation_dir(DataConfig(shards=str(held_out_shards), validation="none")) is None
    assert validation_dir(DataConfig(shards=str(tmp_path))) is None  # no held-out shards: no validation
    with pytest.raises(ConfigError, match="holds no manifest.json"):
        validation_dir(DataConfig(shards=str(held_out_shards), validation=str(tmp_path)))
    with pytest.raises(ConfigError, match="fewer than the 64 ranks"):
        load_validation_batches(held_out_shards / "validation", 32, 50, rank=0, world_size=64)


def _losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "logs" / "metrics.jsonl") if "loss" in r]


def test_training_logs_validation_and_is_unchanged_by_it(tiny_teacher_dir, held_out_shards, tmp_path):
    common = ("data.num_workers=2", "objective.weights={hs: 1.0, mlm: 0.5}", "train.max_steps=4")
    common += ("train.eval_every=2", "train.eval_batches=3", "train.save_every=2")
    # train.eval_every=0: never validate, though held-out shards exist
    plain = train(
        tiny_config(tiny_teacher_dir, held_out_shards, tmp_path / "plain", *common, "train.eval_every=0")
    )
    run = train(tiny_config(tiny_teacher_dir, held_out_shards, tmp_path / "val", *common))
    records = read_metrics(run / "logs" / "metrics.jsonl")
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert set(val[0]) == {"step", "val_loss", "val_loss_hs", "val_loss_mlm"}
    assert _losses(run) == _losses(plain)  # evaluation changes nothing in training
    assert not any("val_loss" in r for r in read_metrics(plain / "logs" / "metrics.jsonl"))
    assert {p.name for p in plot_run(run)} >= {"losses.png"}
    # A second run in the same folder resumes at step 4 and validates at step 6; the log has no repeats.
    train(tiny_config(tiny_teacher_dir, held_out_shards, tmp_path / "val", *common, "train.max_steps=6"))
    val = [r for r in read_metrics(run / "logs" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4, 6]


TRAIN_AND_DUMP_VAL = """
import json, sys
from pretrain_distill.run_config import load_run_config
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
cfg = load_run_config(overrides=json.loads(sys.argv[1]))
with PreemptionFlag() as flag:
    trainer = Trainer(cfg)
    trainer.fit(flag)
    values = trainer.validate()
with open(f"{cfg.train.output_dir}/val_rank{trainer.dist.rank}.json", "w") as f:
    json.dump({"values": values, "batches": [i for i, _ in trainer.validation]}, f)
"""


@pytest.mark.slow
def test_two_ranks_validate_like_one(tiny_teacher_dir, held_out_shards, tmp_path):
    """lr = 0 keeps the weights at their (seeded, identical) start: the validation loss on 2 ranks, each
    evaluating its share, must equal the 1-rank value of the freshly built run."""
    extra = ("train.lr=0.0", "train.max_steps=2", "train.eval_every=2", "train.eval_batches=5")
    extra += ("objective.weights={hs: 1.0, mlm: 0.5}", "data.num_workers=2")
    out = tmp_path / "ranks2"
    script = tmp_path / "child.py"
    script.write_text(TRAIN_AND_DUMP_VAL)
    cmd = torchrun(str(script), json.dumps(tiny_overrides(tiny_teacher_dir, held_out_shards, out, *extra)))
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"val_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["batches"] == [0, 2, 4] and ranks[1]["batches"] == [1, 3]
    assert ranks[0]["values"] == ranks[1]["values"]
    logged = [r for r in read_metrics(out / "logs" / "metrics.jsonl") if "val_loss" in r]
    assert len(logged) == 1 and logged[0]["val_loss"] == pytest.approx(ranks[0]["values"]["val_loss"])

    with launcher_env_scope():
        one = Trainer(tiny_config(tiny_teacher_dir, held_out_shards, tmp_path / "ranks1", *extra))
    assert [i for i, _ in one.validation] == [0, 1, 2, 3, 4]
    assert ranks[0]["values"] == pytest.approx(one.validate(), rel=1e-5)


def test_validation_metrics_have_their_own_tensorboard_group():
    from pretrain_distill.core.metrics_log import _tb_tag

    assert [_tb_tag(k) for k in ("val_loss", "val_loss_hs", "loss", "loss_hs", "lr")] == [
        "val/total",
        "val/hs",
        "loss/total",
        "loss/hs",
        "train/lr",
    ]
