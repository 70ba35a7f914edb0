"""prepare: real text -> shards + manifest; deterministic, resumable, bad input reported."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain_distill.cli import main as cli_main
from pretrain_distill.core.run_lock import OutputDirInUseError
from pretrain_distill.data import prepare as prepare_module
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.manifest import load_manifest
from pretrain_distill.data.prepare import prepare_shards
from pretrain_distill.data.shards import read_rows
from pretrain_distill.data.stream import build_dataloader
from pretrain_distill.data.token_counts import load_token_counts
from pretrain_distill.run_config import DataConfig

from .conftest import write_cc100


def all_rows(out, manifest):
    """Every shard's rows, in manifest order: {name: (ids, lengths)}."""
    rows = {}
    for s in manifest["shards"]:
        pieces = list(
            read_rows(
                out / s["name"],
                0,
                s["sequences"],
                s["sequences"],
                manifest["block_size"],
                manifest["max_length"],
            )
        )
        rows[s["name"]] = (np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))
    return rows


def prepare_wiki(dump, out, tokenizer, workers: int) -> dict:
    """The dump in 128-token sequences, several small shards (``shard_chars``), ``workers`` processes."""
    return prepare_shards(
        [f"wikipedia:{dump}"],
        out,
        tokenizer,
        max_length=128,
        workers=workers,
        shard_chars=30_000,
        block_size=64,
        progress=False,
    )


@pytest.fixture(scope="module")
def wiki_shards(small_wiki_dump, tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("wiki_shards")
    return out, prepare_wiki(small_wiki_dump, out, tokenizer, workers=2)


@pytest.mark.integration
def test_wikipedia_manifest_and_shard_contents(wiki_shards, small_wiki_dump, tokenizer):
    out, manifest = wiki_shards
    from pretrain_distill.data.wikipedia import read_wikipedia_dump

    docs = list(read_wikipedia_dump(small_wiki_dump))
    assert manifest["tokenizer"]["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 30522
    assert len(manifest["tokenizer"]["sha256"]) == 64 and manifest["max_length"] == 128
    assert manifest["sources"] == [f"wikipedia:{small_wiki_dump}"] and manifest["packing"] == "full-sentences"
    assert len(manifest["shards"]) >= 3 and set(manifest["languages"]) == {"en"}
    assert manifest["totals"]["documents"] == len(docs) == manifest["languages"]["en"]["documents"]
    rows = all_rows(out, manifest)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for shard in manifest["shards"]:
        ids, lengths = rows[shard["name"]]
        assert ids.dtype == np.uint16 and ids.shape == (shard["sequences"], 128)
        assert int(lengths.sum()) == shard["tokens"]
    # Every token of every document is in the shards exactly once: nothing truncated or dropped.
    content = sum(int(lens.sum()) - 2 * len(lens) for _, lens in rows.values())
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False, truncation=False)["input_ids"]
    assert content == sum(map(len, encoded)) + len(docs) - len(manifest["shards"])  # + separators
    # Token counts: an independent recount of every real token of every shard (padding excluded).
    recount = np.zeros(30522, dtype=np.int64)
    for ids, lengths in rows.values():
        for row, length in zip(ids, lengths):
            for token in row[:length]:
                recount[token] += 1
    counts = load_token_counts(out, manifest)
    assert set(counts) == {"en"} and np.array_equal(counts["en"], recount)
    assert counts["en"].sum() == manifest["totals"]["tokens"] == manifest["token_counts"]["en"]["tokens"]
    assert counts["en"][tokenizer.cls_token_id] == manifest["totals"]["sequences"]
    assert not list(out.glob("*.counts.npy"))  # the per-chunk counts are merged, then removed
    ids, lengths = rows[manifest["shards"][0]["name"]]
    text = tokenizer.decode(ids[0][: lengths[0]])
    assert text.startswith("[CLS]") and text.endswith("[SEP]") and len(text.split()) > 50


@pytest.mark.integration
def test_workers_do_not_change_the_output_and_rerun_is_a_no_op(
    wiki_shards, small_wiki_dump, tokenizer, tmp_path
):
    out, manifest = wiki_shards
    again = prepare_wiki(small_wiki_dump, tmp_path, tokenizer, workers=1)
    assert again["shards"] == manifest["shards"]
    for s in manifest["shards"]:
        assert (tmp_path / s["name"]).read_bytes() == (out / s["name"]).read_bytes()
    assert again["token_counts"] == manifest["token_counts"]
    assert (tmp_path / "token_counts/en.npy").read_bytes() == (out / "token_counts/en.npy").read_bytes()
    assert prepare_wiki(small_wiki_dump, tmp_path, tokenizer, workers=1) == again
    with pytest.raises(DataError, match="other settings"):
        prepare_shards([f"wikipedia:{small_wiki_dump}"], tmp_path, tokenizer, max_length=64, progress=False)


@pytest.mark.integration
def test_end_to_end_batches_from_wikipedia(wiki_shards, tokenizer):
    from pretrain_distill.data.masking import DynamicMasker

    out, manifest = wiki_shards
    loader = build_dataloader(
        DataConfig(shards=str(out), num_workers=0), batch_size=16, rank=0, world_size=1, seed=0
    )
    batch = next(iter(loader))
    masked, labels = DynamicMasker(tokenizer)(batch["input_ids"], batch["attention_mask"])
    assert batch["input_ids"].shape == (16, 128) and (labels != -100).any()
    assert len(loader) == -(-manifest["totals"]["sequences"] // 16)


def test_interrupted_preparation_resumes_without_rereading_finished_units(tmp_path, tokenizer, monkeypatch):
    corpus = tmp_path / "cc100"
    write_cc100(corpus, {"de": 60, "ru": 40, "zh": 30})
    args = dict(tokenizer=tokenizer, max_length=32, workers=1, shard_chars=300, block_size=8, progress=False)
    reference = prepare_shards([f"cc100:{corpus}"], tmp_path / "ref", **args)
    assert set(reference["languages"]) == {"de", "ru", "zh"} and len(reference["shards"]) > 6

    real = prepare_module.iter_unit_documents
    read = []

    def crash_on_the_third_unit(unit):
        if len(read) == 2:
            raise KeyboardInterrupt
        read.append(unit.files)
        return real(unit)

    monkeypatch.setattr(prepare_module, "iter_unit_documents", crash_on_the_third_unit)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards([f"cc100:{corpus}"], tmp_path / "run", **args)
    assert not (tmp_path / "run" / "manifest.json").exists()
    with pytest.raises(DataError, match="preparation unfinished"):
        load_manifest(tmp_path / "run")
    first = list(read)
    read.clear()
    monkeypatch.setattr(prepare_module, "iter_unit_documents", lambda u: read.append(u.files) or real(u))
    resumed = prepare_shards([f"cc100:{corpus}"], tmp_path / "run", **args)
    assert len(first) == 2 and len(read) == 1 and not set(read) & set(first)  # finished units not read
    assert resumed["shards"] == reference["shards"]
    for s in reference["shards"]:
        assert (tmp_path / "run" / s["name"]).read_bytes() == (tmp_path / "ref" / s["name"]).read_bytes()
    assert not (tmp_path / "run" / "progress.jsonl").exists()
    assert resumed["token_counts"] == reference["token_counts"] and set(resumed["token_counts"]) == {
        "de",
        "ru",
        "zh",
    }
    for language, counts in load_token_counts(tmp_path / "run", resumed).items():
        assert np.array_equal(counts, load_token_counts(tmp_path / "ref", reference)[language])


def test_bad_documents_are_counted_and_reported(tmp_path, tokenizer, caplog):
    path = tmp_path / "docs.jsonl"
    long_doc = " ".join(f"word{i}" for i in range(400))
    lines = [{"text": "Fine text."}, {"text": "   \n"}, {"text": long_doc}, {"text": ""}]
    path.write_bytes(b"\n".join(json.dumps(x).encode() for x in lines) + b'\n{"text": "bad \xff byte"}\n')
    with caplog.at_level(logging.WARNING):
        manifest = prepare_shards(
            [f"jsonl:{path}#language=en"],
            tmp_path / "out",
            tokenizer,
            max_length=64,
            workers=1,
            progress=False,
        )
    totals = manifest["totals"]
    assert totals["documents"] == 3 and totals["empty_documents"] == 2 and totals["decode_errors"] == 1
    assert f"2 empty documents skipped (first: {path}: line 2)" in caplog.text
    assert f"{path}: line 5, byte 14: invalid UTF-8" in caplog.text
    encoded = len(tokenizer(long_doc, add_special_tokens=False)["input_ids"])
    assert encoded > 128  # the long document is split over sequences, not truncated
    assert totals["tokens"] - 2 * totals["sequences"] >= encoded


def test_cli_prepare(tmp_path, capsys):
    corpus = tmp_path / "c"
    write_cc100(corpus, {"zh": 10})
    code = cli_main(
        [
            "prepare",
            "--source",
            f"cc100:{corpus}",
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "1",
            "--max-length",
            "16",
            "--no-progress",
        ]
    )
    assert code == 0 and "languages ['zh']" in capsys.readouterr().out
    assert load_manifest(tmp_path / "o")["languages"]["zh"]["documents"] == 10
    assert cli_main(["prepare", "--source", f"cc100:{tmp_path}/none*.txt", "--out", str(tmp_path / "p")]) == 2


def test_cli_help_explains_usage(capsys):
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "Examples:" in text and "KIND:PATH" in text and "--workers" in text


# The prepare CLI, its driver killed (kill -9) once it has journalled its second finished unit, while
# its reader and chunk processes (--workers 2) are busy with the next ones.
KILL_AFTER_TWO_UNITS = """
import os, signal, sys
from pretrain_distill import cli
from pretrain_distill.data import prepare
run_units = prepare._run_units
def units_then_die(*args, **kwargs):
    for finished, result in enumerate(run_units(*args, **kwargs), start=1):
        yield result
        if finished == 2:  # resumed after the second unit's journal line was flushed
            os.kill(os.getpid(), signal.SIGKILL)
prepare._run_units = units_then_die
sys.exit(cli.main(["prepare", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_a_killed_prepare_with_two_workers_resumes_to_identical_shards(tmp_path, tokenizer):
    corpus = tmp_path / "cc100"
    write_cc100(corpus, {"de": 60, "ru": 40, "zh": 30})
    options = ["--max-length", "32", "--shard-chars", "300", "--block-size", "8", "--no-progress"]
    reference = prepare_shards(
        [f"cc100:{corpus}"],
        tmp_path / "ref",
        tokenizer=tokenizer,
        max_length=32,
        workers=1,
        shard_chars=300,
        block_size=8,
        progress=False,
    )
    argv = ["--source", f"cc100:{corpus}", "--out", str(tmp_path / "run"), "--workers", "2", *options]
    repo = Path(__file__).resolve().parents[2]
    env = os.environ | {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen(
        [sys.executable, "-c", KILL_AFTER_TWO_UNITS, *argv],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert killed.wait(timeout=300) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)  # its orphaned workers
    journal = (tmp_path / "run" / "progress.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 2 and not (tmp_path / "run" / "manifest.json").exists()
    with pytest.warns(UserWarning, match=rf"taking over the lock left by prepare pid {killed.pid} "):
        assert cli_main(["prepare", *argv]) == 0  # the rerun resumes
    resumed = load_manifest(tmp_path / "run")
    assert resumed["shards"] == reference["shards"] and resumed["totals"] == reference["totals"]
    for s in reference["shards"]:
        assert (tmp_path / "run" / s["name"]).read_bytes() == (tmp_path / "ref" / s["name"]).read_bytes()
    assert not (tmp_path / "run" / "progress.jsonl").exists()


def test_a_second_prepare_into_a_directory_in_use_refuses(tmp_path, tokenizer):
    """Another live process prepares into ``out`` (it holds the lock): refused in one line naming it."""
    corpus = tmp_path / "c"
    write_cc100(corpus, {"zh": 10})
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom pretrain_distill.core.run_lock import RunLock\n"
            f"lock = RunLock({str(out)!r}, 'prepare').acquire()\nprint('held', flush=True)\ntime.sleep(600)",
        ],
        cwd=repo,
        env=os.environ | {"PYTHONPATH": str(repo)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError, match=rf"is in use by prepare pid {holder.pid} on host "):
            prepare_shards(
                [f"cc100:{corpus}"], out, tokenizer=tokenizer, max_length=16, workers=1, progress=False
            )
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
