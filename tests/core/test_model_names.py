"""A model named in a config: the embedded one, a local directory, or a hub id; a name that is none of
these is reported naming the setting and the model (offline: not transformers' anonymous "couldn't
connect")."""

from __future__ import annotations

import pytest
import transformers

from pretrain_distill.core.assets import teacher_path
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.model_names import find_model

OFFLINE = OSError(
    "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
    "cached files.\nCheck your internet connection or see how to run the library in offline mode."
)


def test_local_directories_and_the_embedded_teacher_are_taken_as_they_are(tmp_path):
    assert find_model("minilm", "teacher.path") == str(teacher_path())
    assert find_model(str(tmp_path), "model") == str(tmp_path)


def test_a_missing_path_is_a_missing_directory_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", pytest.fail)
    for name in (str(tmp_path / "nope"), "./runs/x", "runs/distill/export"):
        with pytest.raises(ConfigError, match=f"model: model directory not found: {name}"):
            find_model(name, "model")


def test_an_unreachable_hub_id_names_the_setting_and_the_model(monkeypatch):
    def offline(name, *args, **kwargs):
        raise OFFLINE

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(ConfigError) as info:
        find_model("bert-base-uncased", "distill.teacher")
    assert str(info.value) == (
        "distill.teacher: 'bert-base-uncased' is no local model directory, and the hub cannot give it "
        "(We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
        "the cached files)"
    )
