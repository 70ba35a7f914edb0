"""Start-up resolution without training: init_from, resume, step budget, masking seeds."""

from __future__ import annotations

import pytest

from pretrain_distill.core.checkpoint_trust import CheckpointError
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.engine.trainer import mask_seed, resolve_init_from, resolve_resume, total_steps
from pretrain_distill.run_config import RunConfig, TrainConfig


def _checkpoint(run_dir, step):
    store = CheckpointStore(run_dir / "checkpoints", keep_last=5)
    staged = store.begin(step)
    (staged / "student").mkdir()
    (staged / "student" / "config.json").write_text("{}")
    return store.commit(step, {"world_size": 1})


def test_init_from_forms(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 5)
    newest = _checkpoint(run, 9)
    assert resolve_init_from("") == ""
    assert resolve_init_from(str(newest)) == str(newest / "student")  # a checkpoint dir
    assert resolve_init_from(str(run)) == str(newest / "student")  # a run dir without export
    (run / "export").mkdir()
    (run / "export" / "config.json").write_text("{}")
    assert resolve_init_from(str(run)) == str(run / "export")  # a run dir with export
    assert resolve_init_from(str(run / "export")) == str(run / "export")  # a model dir
    weights = tmp_path / "student.safetensors"
    weights.write_bytes(b"x")
    assert resolve_init_from(str(weights)) == str(weights)  # a weights file
    with pytest.raises(ConfigError, match="student.init_from"):
        resolve_init_from(str(tmp_path / "missing"))


def test_resume_forms(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    assert resolve_resume("auto", store) is None
    first = _checkpoint(tmp_path, 3)
    second = _checkpoint(tmp_path, 6)
    assert resolve_resume("auto", store) == second
    assert resolve_resume("overwrite", store) is None
    assert resolve_resume(str(first), store) == first
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path), store)


def test_resume_none_refuses_a_directory_with_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    assert resolve_resume("none", store) is None  # nothing there yet
    _checkpoint(tmp_path, 3)
    with pytest.raises(ConfigError) as err:
        resolve_resume("none", store)
    message = str(err.value)
    assert "\n" not in message and f"train.output_dir={tmp_path}" in message
    assert "train.resume=overwrite" in message and "step_00000003" in message


def test_damaged_newest_checkpoint_is_skipped_for_auto_and_named_for_a_path(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    first = _checkpoint(tmp_path, 3)
    second = _checkpoint(tmp_path, 6)
    bad = second / "student" / "config.json"
    bad.write_text("{}   ")  # another size
    with caplog.at_level("WARNING"):
        assert resolve_resume("auto", store) == first
    assert str(bad) in caplog.text
    with pytest.raises(ConfigError, match=f"train.resume: {bad}: 5 bytes, 2 were written"):
        resolve_resume(str(second), store)
    (first / "student" / "config.json").write_text("[]")  # same size, other bytes
    with pytest.raises(CheckpointError, match="no checkpoint passes its checks"):
        resolve_resume("auto", store)  # never a silent fresh start beside damaged checkpoints


def test_total_steps():
    cfg = RunConfig(train=TrainConfig(epochs=2.5, grad_accum=2))
    assert total_steps(cfg, batches_per_epoch=10) == 12  # floor(2.5 * 10 / 2)
    cfg.train.max_steps = 7
    assert total_steps(cfg, batches_per_epoch=10) == 7  # a step budget wins
    cfg.train.max_steps = 0
    cfg.train.epochs = 0.01
    with pytest.raises(ConfigError, match="gives no optimizer step"):
        total_steps(cfg, batches_per_epoch=10)


def test_mask_seed_depends_only_on_seed_step_rank():
    assert mask_seed(42, 7, 0) == mask_seed(42, 7, 0)
    assert len({mask_seed(42, 7, 0), mask_seed(42, 8, 0), mask_seed(42, 7, 1), mask_seed(43, 7, 0)}) == 4
