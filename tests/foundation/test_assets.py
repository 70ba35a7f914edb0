"""The embedded real assets are found and load offline with the real libraries."""

from __future__ import annotations

import bz2

import pytest

from pretrain_distill.core import assets

pytestmark = pytest.mark.integration


def test_teacher_loads_offline_with_automodel(teacher_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(teacher_dir)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    assert (config.num_attention_heads, config.vocab_size) == (12, 30522)
    model = AutoModel.from_pretrained(teacher_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    assert tok.is_fast and tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_wikipedia_dump_is_a_real_xml_dump():
    path = assets.wikipedia_dump_path()
    assert path.suffix == ".bz2" and ".xml" in path.name
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        head = fh.read(4096)
    assert "<mediawiki" in head and "<page>" in head


def test_movie_sentences_rows_and_scores():
    path = assets.movie_sentences_path()
    rows = [line.rstrip("\r\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r != [""]]
    assert len(rows) == 10605
    scores = [float(r[1]) for r in rows]
    assert min(scores) >= -4 and max(scores) <= 4
    assert sum(s > 0 for s in scores) == 5242 and sum(s < 0 for s in scores) == 5326


def test_env_override_and_missing_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_MOVIE_SENTENCES", str(tmp_path / "m.txt"))
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.movie_sentences_path()
    (tmp_path / "m.txt").write_text("1\t1.0\tgood\n")
    assert assets.movie_sentences_path() == tmp_path / "m.txt"


def test_resolve_model_path():
    assert assets.resolve_model_path("minilm") == str(assets.teacher_path())
    assert assets.resolve_model_path("/some/dir") == "/some/dir"


def test_assets_command_prints_paths(capsys):
    from pretrain_distill.cli import main

    assert main(["assets", "--json"]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "wikipedia" in out and "movies" in out
