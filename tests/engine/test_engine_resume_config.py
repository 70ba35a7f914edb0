"""Which config changes a checkpoint may be resumed with (pretrain_distill.engine.resume)."""

from __future__ import annotations

import pytest

from pretrain_distill.core.config_loading import save_config, to_dict
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.run_identity import flatten, under
from pretrain_distill.engine.resume import check_resume_config, run_changes
from pretrain_distill.run_config import RESUME_MAY_CHANGE, load_run_config


def tree(*overrides: str) -> dict:
    return to_dict(load_run_config(overrides=list(overrides)))


def test_flatten_names_every_leaf_by_its_path():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_same_config_and_same_student_written_two_ways_are_no_change():
    assert run_changes(tree(), tree()) == ([], [])
    # the preset's own numbers spelled out, and betas as YAML reads them back (a list, not a tuple)
    spelled = tree("student.preset=3L", "student.layers=3", "student.heads=12", "student.hidden=384")
    assert run_changes(tree("student.preset=3L"), spelled) == ([], [])
    saved = tree()
    saved["train"]["betas"] = list(saved["train"]["betas"])
    assert run_changes(saved, tree()) == ([], [])


def test_fields_a_checkpoint_predates_count_as_their_defaults():
    saved = tree()
    for key in ("vocab", "vocab_min_count", "vocab_coverage"):  # written before the pruned vocabulary
        del saved["student"][key]
    assert run_changes(saved, tree()) == ([], [])
    assert run_changes(saved, tree("student.vocab=corpus"))[0] == ["student.vocab: full -> corpus"]


def test_identity_changes_and_other_changes_are_told_apart():
    identity, other = run_changes(
        tree("train.max_steps=10", "objective.temperature=2.0"),
        tree(
            "train.max_steps=20", "objective.temperature=1.0", "train.micro_batch_size=8", "student.ffn=512"
        ),
    )
    assert identity == [
        "objective.temperature: 2.0 -> 1.0",
        "student.shape: [3, 12, 384, 1024] -> [3, 12, 384, 512]",
    ]
    assert other == ["train.max_steps: 10 -> 20", "train.micro_batch_size: 32 -> 8"]


@pytest.mark.parametrize(
    "change",
    [
        "teacher.path=bert-base-uncased",
        "student.init=teacher",
        "objective.relation_heads=12",
        "data.mlm_probability=0.2",
    ],
)
def test_every_identity_field_is_refused(tmp_path, change):
    assert not any(change.startswith(name) for name in RESUME_MAY_CHANGE)
    save_config(load_run_config(), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=f"{tmp_path} belongs to another run .*{change.split('=')[0]}"):
        check_resume_config(tmp_path, load_run_config(overrides=[change]))


@pytest.mark.parametrize(
    "change",
    [
        "data.shards=/local/ssd/shards",  # checked by content when the loader restores its position
        "data.num_workers=8",
        "train.precision=fp32",
        "train.zero_stage=3",
        "train.compile=inductor",
        "teacher.dtype=fp32",
        "train.epochs=3",
    ],
)
def test_settings_a_resume_may_change_are_returned(tmp_path, change):
    save_config(load_run_config(), tmp_path / "config.yaml")
    (line,) = check_resume_config(tmp_path, load_run_config(overrides=[change]))
    assert line.startswith(change.split("=")[0] + ": ")


def test_an_unreadable_checkpoint_config_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("teacher: [unclosed")
    with pytest.raises(ConfigError, match="config.yaml: cannot read the saved config"):
        check_resume_config(tmp_path, load_run_config())


def test_the_declared_key_lists_name_real_fields():
    """A misspelt entry would silently protect (or free) nothing."""
    from finetune.finetune_config import RESUME_MAY_CHANGE as FINETUNE_MAY_CHANGE
    from finetune.finetune_config import FinetuneConfig

    run_keys, finetune_keys = flatten(tree()).keys(), flatten(to_dict(FinetuneConfig())).keys()
    for names, keys in ((RESUME_MAY_CHANGE, run_keys), (FINETUNE_MAY_CHANGE, finetune_keys)):
        for name in names:
            assert any(map(under([name]), keys)), name
