"""prepare at scale: units over workers (1 vs 3 workers identical), split and multistream Wikipedia
dumps, corrupt compressed members, held-out validation shards, HF dataset layouts, checked inputs."""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain_distill.cli import main as cli_main
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.prepare import available_cpus, prepare_shards
from pretrain_distill.data.sources import iter_documents, parse_source, plan_units
from pretrain_distill.data.stream import build_dataloader
from pretrain_distill.data.wikipedia import read_wikipedia_dump
from pretrain_distill.run_config import DataConfig

from .conftest import write_cc100
from .test_prepare import all_rows


def _wiki_parts(dump):
    """(header, [page xml, ...]) of the small real dump."""
    text = bz2.open(dump, "rt", encoding="utf-8").read()
    return text[: text.index("<page>")], re.findall(r"<page>.*?</page>", text, flags=re.DOTALL)


@pytest.fixture
def split_dump_dir(small_wiki_dump, tmp_path):
    """The dump as two split parts named like enwiki's (``...articles1.xml-p1p41242.bz2``)."""
    header, pages = _wiki_parts(small_wiki_dump)
    directory = tmp_path / "enwiki-split"
    directory.mkdir()
    for number, part in enumerate((pages[:6], pages[6:]), start=1):
        name = f"enwiki-20231101-pages-articles{number}.xml-p{number}p{number * 100}.bz2"
        with bz2.open(directory / name, "wt", encoding="utf-8") as f:
            f.write(header + "\n".join(part) + "\n</mediawiki>\n")
    (directory / "enwiki-20231101-pages-articles-multistream-index1.txt-p1p100.bz2").write_bytes(b"")
    return directory


def _same_shards(out_a, out_b, manifest_a, manifest_b):
    assert manifest_a["shards"] == manifest_b["shards"]
    for s in manifest_a["shards"]:
        assert (out_a / s["name"]).read_bytes() == (out_b / s["name"]).read_bytes()


@pytest.mark.integration
def test_one_and_three_workers_write_identical_shards(split_dump_dir, tmp_path, tokenizer):
    corpus = tmp_path / "cc100"
    write_cc100(corpus, {"de": 40, "ru": 30, "zh": 20})
    sources = [f"wikipedia:{split_dump_dir}", f"cc100:{corpus}"]
    args = dict(tokenizer=tokenizer, max_length=64, shard_chars=3000, block_size=16, progress=False)
    args["validation_fraction"] = 0.2
    one = prepare_shards(sources, tmp_path / "one", workers=1, **args)
    three = prepare_shards(sources, tmp_path / "three", workers=3, **args)
    assert len(plan_units(parse_source(sources[0]), 3000)) == 2  # the two split parts
    assert one["last_run"]["workers"] == 1 and three["last_run"]["workers"] == 3
    assert set(one["languages"]) == {"en", "de", "ru", "zh"} and len(one["shards"]) > 6
    _same_shards(tmp_path / "one", tmp_path / "three", one, three)
    val_one = json.loads((tmp_path / "one" / "validation" / "manifest.json").read_text())
    val_three = json.loads((tmp_path / "three" / "validation" / "manifest.json").read_text())
    _same_shards(tmp_path / "one" / "validation", tmp_path / "three" / "validation", val_one, val_three)


def test_split_dump_directory_reads_every_part(split_dump_dir, small_wiki_dump):
    whole = [(d.text, d.language) for d in read_wikipedia_dump(small_wiki_dump, clean=False)]
    parts = [(d.text, d.language) for d in iter_documents(parse_source(f"wikipedia:{split_dump_dir}"))]
    assert parts == whole and len(whole) == 10 and {lang for _, lang in whole} == {"en"}


def _multistream(small_wiki_dump, directory, pages_per_stream=2):
    """A multistream dump (header stream, streams of pages, closing stream) and its index."""
    header, pages = _wiki_parts(small_wiki_dump)
    dump = directory / "enwiki-20231101-pages-articles-multistream.xml.bz2"
    index_lines, blob = [], bz2.compress(header.encode())
    for start in range(0, len(pages), pages_per_stream):
        for page in pages[start : start + pages_per_stream]:
            page_id = re.search(r"<id>(\d+)</id>", page).group(1)
            title = re.search(r"<title>(.*?)</title>", page).group(1)
            index_lines.append(f"{len(blob)}:{page_id}:{title}\n")
        blob += bz2.compress(("\n".join(pages[start : start + pages_per_stream]) + "\n").encode())
    dump.write_bytes(blob + bz2.compress(b"</mediawiki>\n"))
    index = directory / "enwiki-20231101-pages-articles-multistream-index.txt.bz2"
    index.write_bytes(bz2.compress("".join(index_lines).encode()))
    return dump, index


def test_multistream_index_cuts_the_dump_into_ranges_of_whole_pages(small_wiki_dump, tmp_path):
    dump, index = _multistream(small_wiki_dump, tmp_path)
    whole = [d.text for d in read_wikipedia_dump(dump, clean=False)]  # the dump read as one file
    source = parse_source(f"wikipedia:{dump}#index={index}")
    units = plan_units(source, target_bytes=20_000)
    assert len(units) >= 3 and units[-1].byte_range[1] is None
    assert [u.byte_range[1] for u in units[:-1]] == [u.byte_range[0] for u in units[1:]]
    assert [d.text for d in iter_documents(source, target_bytes=20_000)] == whole and len(whole) == 10


def test_corrupt_stream_of_a_multistream_dump_loses_only_its_pages(small_wiki_dump, tmp_path, tokenizer):
    dump, index = _multistream(small_wiki_dump, tmp_path)
    starts = sorted({int(line.split(":")[0]) for line in bz2.open(index, "rt")})
    _, pages = _wiki_parts(small_wiki_dump)
    articles = [("<redirect" not in p and "<ns>0</ns>" in p) for p in pages]
    lost = sum(articles[4:6])  # the third stream holds pages 4 and 5
    assert lost >= 1
    data = bytearray(dump.read_bytes())
    middle = (starts[2] + starts[3]) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    dump.write_bytes(bytes(data))
    source = f"wikipedia:{dump}#index={index}"
    args = dict(tokenizer=tokenizer, max_length=64, workers=1, shard_chars=1, progress=False)
    with pytest.raises(DataError, match=rf"corrupt bz2 member starting at byte {starts[2]} "):
        prepare_shards([source], tmp_path / "strict", **args)
    assert not (tmp_path / "strict" / "manifest.json").exists()
    manifest = prepare_shards([source], tmp_path / "skip", skip_bad_input=True, **args)
    assert [b["member_offset"] for b in manifest["bad_input"]] == [starts[2]]
    assert manifest["totals"]["documents"] == sum(articles) - lost  # every other range kept


def _bz2_members(directory, docs_per_member=5, members=3):
    """``text`` corpus: one .txt.bz2 of ``members`` concatenated bz2 members, and the member offsets."""
    path = directory / "corpus.txt.bz2"
    blob, offsets = b"", []
    for m in range(members):
        offsets.append(len(blob))
        docs = [f"Member {m} document {d}: " + "words " * 30 for d in range(docs_per_member)]
        blob += bz2.compress(("\n\n".join(docs) + "\n\n").encode())
    path.write_bytes(blob)
    return path, offsets


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_member_is_reported_with_offsets_or_skipped_and_counted(tmp_path, tokenizer, caplog, workers):
    """Also with reader and chunk processes (``--workers 2``): the error crosses the process boundary
    with its offsets, and the skipped member is counted by the driver."""
    path, offsets = _bz2_members(tmp_path)
    data = bytearray(path.read_bytes())
    middle = (offsets[1] + offsets[2]) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    args = dict(tokenizer=tokenizer, max_length=64, workers=workers, progress=False)
    with pytest.raises(
        DataError, match=rf"corpus.txt.bz2: corrupt bz2 member starting at byte {offsets[1]} "
    ):
        prepare_shards([f"text:{path}#language=en"], tmp_path / "strict", **args)
    manifest = prepare_shards([f"text:{path}#language=en"], tmp_path / "skip", skip_bad_input=True, **args)
    assert manifest["totals"]["bad_input"] == 1
    assert manifest["bad_input"][0]["member_offset"] == offsets[1]
    assert manifest["bad_input"][0]["error_offset"] > offsets[1]
    assert manifest["totals"]["documents"] == 10  # members 0 and 2: nothing else lost
    assert f"starting at byte {offsets[1]}" in caplog.text


def test_truncated_xz_names_file_and_member_offset(tmp_path, tokenizer):
    path = tmp_path / "sw.txt.xz"
    first = lzma.compress(b"Habari ya asubuhi.\n\n" * 50)
    second = lzma.compress("".join(f"Sentensi {i * 7919 % 10007}.\n\n" for i in range(3000)).encode())
    path.write_bytes(first + second[: len(second) // 2])
    with pytest.raises(DataError, match=rf"sw.txt.xz: corrupt xz member starting at byte {len(first)} "):
        prepare_shards([f"cc100:{path}"], tmp_path / "o", tokenizer, workers=1, progress=False)


@pytest.mark.integration
def test_validation_fraction_holds_documents_out_of_training(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    docs = [f"document number {i} " + "alpha beta gamma " * (i % 7 + 1) for i in range(300)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    manifest = prepare_shards(
        [f"jsonl:{path}#language=en"],
        tmp_path / "out",
        tokenizer,
        max_length=32,
        workers=1,
        shard_chars=4000,
        block_size=8,
        progress=False,
        validation_fraction=0.1,
    )
    val = manifest["validation"]
    assert val["dir"] == "validation" and 10 <= val["documents"] <= 55
    assert manifest["totals"]["documents"] + val["documents"] == len(docs)
    # Each document is in exactly one of the two sets: none in both, none lost (one "number" each).
    number = tokenizer.convert_tokens_to_ids("number")
    train_rows = all_rows(tmp_path / "out", manifest)
    val_manifest = json.loads((tmp_path / "out" / "validation" / "manifest.json").read_text())
    val_rows = all_rows(tmp_path / "out" / "validation", val_manifest)
    in_train = sum(int((ids == number).sum()) for ids, _ in train_rows.values())
    in_val = sum(int((ids == number).sum()) for ids, _ in val_rows.values())
    assert in_val == val["documents"] and in_train + in_val == len(docs)
    loader = build_dataloader(
        DataConfig(shards=str(tmp_path / "out" / "validation"), num_workers=0), 4, 0, 1, 0
    )
    assert next(iter(loader))["input_ids"].shape == (4, 32)


@pytest.mark.integration
def test_a_small_validation_fraction_still_holds_something_out_or_says_why_not(tmp_path, tokenizer, caplog):
    """--validation-fraction 0.001 on 20 documents: the first is held out (not an empty validation/);
    when that one holds no text, there is no validation split and a warning says why."""
    path = tmp_path / "docs.jsonl"
    docs = [f"document number {i} alpha beta gamma" for i in range(20)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    options = dict(max_length=32, workers=1, block_size=8, progress=False, validation_fraction=0.001)
    manifest = prepare_shards([f"jsonl:{path}#language=en"], tmp_path / "out", tokenizer, **options)
    assert manifest["validation"]["documents"] == 1 and manifest["totals"]["documents"] == 19
    val_manifest = json.loads((tmp_path / "out" / "validation" / "manifest.json").read_text())
    (ids, _), *_ = all_rows(tmp_path / "out" / "validation", val_manifest).values()
    assert tokenizer.decode(ids[ids != tokenizer.pad_token_id][1:-1]).startswith("document number 0 ")

    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in ["   ", *docs]))
    manifest = prepare_shards([f"jsonl:{path}#language=en"], tmp_path / "blank", tokenizer, **options)
    assert "validation" not in manifest and not (tmp_path / "blank" / "validation").exists()
    assert "held-out documents hold no text" in caplog.text


def _wikimedia_layout(root):
    """Two configs of the ``wikimedia/wikipedia`` layout: 20231101.en and 20231101.fr parquet files."""
    for config, texts in {
        "20231101.en": ["Paris is a city.", "London is a city.", "Rome is a city."],
        "20231101.fr": ["Paris est une ville.", "Lyon est une ville."],
    }.items():
        (root / config).mkdir(parents=True)
        rows = {"id": [str(i) for i in range(len(texts))], "url": ["u"] * len(texts)}
        rows |= {"title": ["t"] * len(texts), "text": texts}
        pq.write_table(pa.table(rows), root / config / "train-00000-of-00001.parquet")


def test_hf_layouts_config_and_language_tags(tmp_path):
    import datasets

    root = tmp_path / "wikipedia"
    _wikimedia_layout(root)
    french = [
        (d.text, d.language) for d in iter_documents(parse_source(f"wikipedia-hf:{root}#config=20231101.fr"))
    ]
    assert french == [("Paris est une ville.", "fr"), ("Lyon est une ville.", "fr")]
    both = {(d.text, d.language) for d in iter_documents(parse_source(f"wikipedia-hf:{root}"))}
    assert ("London is a city.", "en") in both and ("Lyon est une ville.", "fr") in both and len(both) == 5
    with pytest.raises(DataError, match="no config directory '20231101.de'"):
        plan_units(parse_source(f"wikipedia-hf:{root}#config=20231101.de"), 1 << 20)
    # CC100 rows (id, text) saved as arrow files by datasets, streamed back with language=sw.
    cc100 = tmp_path / "cc100-sw"
    datasets.Dataset.from_dict({"id": ["0", "1"], "text": ["Habari ya leo.", "Asante sana."]}).save_to_disk(
        cc100
    )
    rows = [(d.text, d.language) for d in iter_documents(parse_source(f"hf:{cc100}#language=sw"))]
    assert rows == [("Habari ya leo.", "sw"), ("Asante sana.", "sw")]


@pytest.mark.integration
def test_hf_layouts_stream_through_prepare(tmp_path, tokenizer):
    root = tmp_path / "wikipedia"
    _wikimedia_layout(root)
    books = tmp_path / "bookcorpus" / "plain_text"
    books.mkdir(parents=True)
    sentences = [f"the boy walked home on day {i} ." for i in range(500)]
    pq.write_table(pa.table({"text": sentences}), books / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": sentences[:100]}), books / "train-00001-of-00002.parquet")
    manifest = prepare_shards(
        [f"wikipedia-hf:{root}", f"bookcorpus:{tmp_path / 'bookcorpus'}"],
        tmp_path / "out",
        tokenizer,
        max_length=32,
        workers=2,
        shard_chars=2000,
        progress=False,
    )
    assert manifest["languages"]["fr"]["documents"] == 2
    assert manifest["languages"]["en"]["documents"] == 3 + 2  # 3 articles + a passage per parquet file


def test_wrong_source_writes_nothing_and_the_corrected_command_works(tmp_path, capsys):
    corpus = tmp_path / "c"
    write_cc100(corpus, {"zh": 5})
    out = tmp_path / "o"
    base = ["prepare", "--out", str(out), "--workers", "1", "--max-length", "16", "--no-progress"]
    assert (
        cli_main([*base, "--source", f"cc100:{tmp_path}/nowhere/*.txt.xz"]) == 2
    )  # a user mistake: one line, exit 2
    assert (
        cli_main([*base, "--source", f"cc100:{corpus}", "--validation-source", "jsonl:/none"]) == 2
    )  # a user mistake: one line, exit 2
    assert not out.exists()
    assert (
        cli_main([*base, "--source", f"cc100:{corpus}"]) == 0 and "5 sequences" not in capsys.readouterr().err
    )


def test_workers_default_to_the_cpus_the_job_may_use(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert available_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_prepare_sbatch_uses_the_cpus_of_the_job(tmp_path):
    corpus = tmp_path / "c"
    write_cc100(corpus, {"de": 20, "ru": 20, "zh": 20})
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "SLURM_CPUS_PER_TASK": "2", "PYTHONPATH": str(repo)}
    out = tmp_path / "o"
    args = ["--source", f"cc100:{corpus}", "--out", str(out), "--max-length", "16", "--shard-chars", "100"]
    done = subprocess.run(
        ["bash", str(repo / "slurm" / "prepare.sbatch"), *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["workers"] == 2 and set(manifest["languages"]) == {"de", "ru", "zh"}


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_input_bytes_to_the_end(tmp_path, tokenizer, capsys, workers):
    corpus = tmp_path / "c"
    write_cc100(corpus, {"de": 30, "ru": 30})
    prepare_shards(
        [f"cc100:{corpus}"], tmp_path / "o", tokenizer, max_length=16, workers=workers, shard_chars=100
    )
    total = sum(p.stat().st_size for p in corpus.iterdir())
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert last.startswith("prepare: 100%") and f"{total}/{total}" in last.replace("B", "").replace(" ", "")
    assert "units=2/2" in last
