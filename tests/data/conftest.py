"""Data-pipeline fixtures: a trimmed real Wikipedia dump, CC100-format files, tiny synthetic shards."""

from __future__ import annotations

import bz2
import json
import lzma
import re
from pathlib import Path

import numpy as np
import pytest

from pretrain_distill.data.shards import write_shard

# Small CC100-layout corpora (documents separated by blank lines) in three scripts.
CC100_TEXTS = {
    "de": ["Der Hund läuft schnell über die grüne Wiese.", "Morgen fahren wir mit dem Zug nach Berlin."],
    "ru": ["Собака быстро бежит по зелёному лугу.", "Завтра мы поедем на поезде в Москву."],
    "zh": ["狗在绿色的草地上快速奔跑。", "明天我们坐火车去北京。"],
}


def write_cc100(directory: Path, docs_per_language: dict[str, int]) -> dict[str, list[str]]:
    """Write ``xx.txt.xz`` files of generated documents; return the documents per language."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for language, count in docs_per_language.items():
        lines = CC100_TEXTS[language]
        docs = [f"{i}: " + " ".join(lines[(i + k) % 2] for k in range(1 + i % 5)) for i in range(count)]
        with lzma.open(directory / f"{language}.txt.xz", "wt", encoding="utf-8") as f:
            f.write("\n\n".join(d.replace(". ", ".\n") for d in docs) + "\n")
        written[language] = docs
    return written


@pytest.fixture(scope="session")
def small_wiki_dump(tmp_path_factory) -> Path:
    """10 real articles (under 40k characters) + 3 redirects of gensim's English Wikipedia dump."""
    from pretrain_distill.core.assets import wikipedia_dump_path

    text = bz2.open(wikipedia_dump_path(), "rt", encoding="utf-8").read()
    pages = re.findall(r"<page>.*?</page>", text, flags=re.DOTALL)
    redirects = [p for p in pages if "<redirect" in p][:3]
    pages = (
        redirects + [p for p in pages if "<redirect" not in p and "<ns>0</ns>" in p and len(p) < 40_000][:10]
    )
    path = tmp_path_factory.mktemp("wiki") / "enwiki-small.xml.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write(text[: text.index("<page>")] + "\n".join(pages) + "\n</mediawiki>\n")
    return path


def uid_row(uid: int, length: int, max_length: int) -> np.ndarray:
    """A recognisable sequence: [CLS] uid-high uid-low 7 7 ... [SEP], padded with 0."""
    row = np.zeros(max_length, dtype=np.uint16)
    row[: length - 1] = 7
    row[0], row[1], row[2], row[length - 1] = 101, 1000 + uid // 1000, 1000 + uid % 1000, 102
    return row


def row_uid(row) -> int:
    return (int(row[1]) - 1000) * 1000 + int(row[2]) - 1000


@pytest.fixture
def make_shards(tmp_path):
    """``make_shards(counts, languages=None, max_length=8, block_size=4) -> dir``: uid-labelled shards."""

    def make(
        counts: list[int], languages: list[str] | None = None, max_length: int = 8, block_size: int = 4
    ) -> Path:
        out = tmp_path / f"shards{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        languages = languages or ["en"] * len(counts)
        entries, uid = [], 0
        for k, (count, language) in enumerate(zip(counts, languages)):
            lengths = np.array([4 + (uid + i) % (max_length - 3) for i in range(count)], dtype=np.int32)
            ids = np.stack([uid_row(uid + i, int(lengths[i]), max_length) for i in range(count)])
            name = f"{language}-{k:06d}.tar"
            write_shard(out / name, ids, lengths, block_size)
            entries.append(
                {"name": name, "language": language, "sequences": count, "tokens": int(lengths.sum())}
            )
            uid += count
        manifest = {
            "max_length": max_length,
            "block_size": block_size,
            "tokenizer": {"sha256": "test", "pad_id": 0},
            "shards": entries,
        }
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    return make
