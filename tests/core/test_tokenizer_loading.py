"""A tokenizer that cannot be its model's is refused when it is loaded, not found out by a training run:
transformers 5 turns a model directory without vocabulary files into a 5-token tokenizer that maps
every word to [UNK]. Real models whose embedding table is padded beyond the vocabulary still load."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pretrain_distill.cli import main
from pretrain_distill.core.tokenizer_loading import TokenizerMismatchError, load_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def without_vocabulary(teacher_dir, tmp_path):
    """The embedded teacher's directory, its vocabulary files left out (what a racing copy looked like)."""
    path = tmp_path / "teacher"
    shutil.copytree(
        teacher_dir, path, ignore=shutil.ignore_patterns("vocab.txt", "tokenizer.json", "*.safetensors")
    )
    return path


def test_a_directory_without_vocabulary_files_is_refused(without_vocabulary):
    with pytest.raises(TokenizerMismatchError, match=r"holds only its 5 special tokens") as error:
        load_tokenizer(without_vocabulary)
    assert str(without_vocabulary) in str(error.value) and "\n" not in str(error.value)


def test_a_tokenizer_far_smaller_than_the_embedding_table_is_refused(teacher_dir, tmp_path):
    vocab = {token: i for i, token in enumerate(SPECIALS + list("abcdefghij"))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    small = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(
        TokenizerMismatchError, match=r"has 15 tokens but the model's embedding table has 30522 rows"
    ):
        load_tokenizer(tmp_path / "small", teacher_dir)
    assert len(load_tokenizer(tmp_path / "small")) == 15  # on its own (no model to compare with) it is fine


def test_an_embedding_table_padded_beyond_the_vocabulary_loads(teacher_dir, tmp_path):
    """30522 tokens in a table rounded up to a multiple of 1024 (30720 rows): a real layout, accepted."""
    padded = tmp_path / "padded"
    shutil.copytree(teacher_dir, padded, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((padded / "config.json").read_text())
    (padded / "config.json").write_text(json.dumps(config | {"vocab_size": 30720}))
    assert len(load_tokenizer(padded)) == 30522
    (padded / "config.json").write_text(json.dumps(config | {"vocab_size": 31546}))  # 1024 rows too many
    with pytest.raises(TokenizerMismatchError, match="31546 rows"):
        load_tokenizer(padded)


def test_the_cli_refuses_it_in_one_line_with_exit_2(without_vocabulary, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words\n")
    code = main(
        [
            "prepare",
            "--source",
            f"text:{corpus}",
            "--out",
            str(tmp_path / "out"),
            "--tokenizer",
            str(without_vocabulary),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds only its 5 special tokens" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
