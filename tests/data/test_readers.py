"""Readers: real Wikipedia dump, CC100 layout, text / jsonl / parquet / HF, BookCorpus; bad input."""

from __future__ import annotations

import bz2
import itertools
import json
import logging
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain_distill.data.errors import DataError
from pretrain_distill.data.readers import read_cc100, read_jsonl, read_parquet
from pretrain_distill.data.sources import iter_documents, parse_source
from pretrain_distill.data.wikipedia import read_wikipedia_dump, strip_wiki_markup

from .conftest import write_cc100


@pytest.mark.integration
def test_wikipedia_dump_articles_streamed_and_clean():
    from pretrain_distill.core.assets import wikipedia_dump_path

    raw = list(read_wikipedia_dump(wikipedia_dump_path(), clean=False))
    assert len(raw) == 106  # the dump's 206 pages hold 106 articles; redirects and other namespaces go
    assert all(d.language == "en" and d.markup == "wiki" for d in raw)
    first = next(read_wikipedia_dump(wikipedia_dump_path()))
    assert first.position.endswith("'Anarchism'") and first.markup is None
    assert first.text.startswith("Anarchism is a political philosophy")
    for doc in itertools.islice(read_wikipedia_dump(wikipedia_dump_path()), 5):
        for leftover in ("{{", "[[", "<ref", "Category:", "thumb|"):
            assert leftover not in doc.text, (doc.position, leftover)


def test_strip_wiki_markup():
    wikitext = (
        "'''Foo''' is a [[bar (thing)|bar]] in [[Baz]].<ref>Cited, p. 3.</ref>{{Infobox|x=1}}\n"
        "[[File:Foo.jpg|thumb|A caption]]\n== History ==\nIt began.\n[[Category:Things]]\n[[de:Foo]]"
    )
    assert strip_wiki_markup(wikitext) == "Foo is a bar in Baz.\n\nHistory\nIt began."


def test_wikipedia_dump_errors_name_the_file(tmp_path):
    broken = tmp_path / "enwiki-broken.xml.bz2"
    broken.write_bytes(bz2.compress(b"<mediawiki><page><title>A</title><ns>0</ns>")[:-20])
    with pytest.raises(DataError, match="enwiki-broken.xml.bz2"):
        list(read_wikipedia_dump(broken))
    bad_xml = tmp_path / "xxwiki-bad.xml"
    bad_xml.write_text("<mediawiki><page></mediawiki>")
    with pytest.raises(DataError, match=r"xxwiki-bad.xml: malformed XML at line 1"):
        list(read_wikipedia_dump(bad_xml))


def test_cc100_layout_documents_and_language(tmp_path):
    written = write_cc100(tmp_path, {"de": 4, "zh": 3})
    docs = list(read_cc100(tmp_path / "de.txt.xz"))
    assert [d.text.replace("\n", " ") for d in docs] == written["de"]
    assert {d.language for d in docs} == {"de"} and docs[1].position == "line 3"
    source = parse_source(f"cc100:{tmp_path}")
    assert [d.language for d in iter_documents(source)] == ["de"] * 4 + ["zh"] * 3


def test_invalid_utf8_is_replaced_and_reported_with_file_and_line(tmp_path, caplog):
    path = tmp_path / "ru.txt"
    path.write_bytes("Первый документ.\n\nВторой ".encode() + b"\xff" + " документ.\n".encode())
    with caplog.at_level(logging.WARNING):
        docs = list(read_cc100(path))
    assert [d.decode_errors for d in docs] == [0, 1] and "\ufffd" in docs[1].text
    assert f"{path}: line 3, byte 13: invalid UTF-8" in caplog.text


def test_unreadable_compressed_file_names_file(tmp_path):
    path = tmp_path / "de.txt.xz"
    path.write_bytes(
        lzma.compress("".join(f"Satz {i * 7919 % 10007}.\n" for i in range(5000)).encode())[:2000]
    )
    with pytest.raises(
        DataError, match=r"de.txt.xz: corrupt xz member starting at byte 0 \(error by byte 2000\)"
    ):
        list(read_cc100(path))


def test_jsonl_columns_and_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"content": "Hello there.", "lang": "en"}\n\n{"content": "Hallo.", "lang": "de"}\n')
    docs = list(read_jsonl(path, column="content", language_column="lang"))
    assert [(d.text, d.language, d.position) for d in docs] == [
        ("Hello there.", "en", "line 1"),
        ("Hallo.", "de", "line 3"),
    ]
    with pytest.raises(DataError, match=r"a.jsonl: line 1: no text column 'text'"):
        list(read_jsonl(path))
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"a.jsonl: line 2: not valid JSON"):
        list(read_jsonl(path))


def test_parquet_streamed_with_text_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"text": [f"Row {i}." for i in range(3000)], "id": list(range(3000))}),
        path,
        row_group_size=500,
    )
    docs = list(read_parquet(path, language="fr"))
    assert len(docs) == 3000 and docs[2999].text == "Row 2999." and docs[2999].position == "row 2999"
    with pytest.raises(DataError, match="no column 'body'"):
        list(read_parquet(path, column="body"))


def test_hf_wikipedia_layout_from_local_parquet(tmp_path):
    wiki = tmp_path / "wikipedia" / "20231101.fr"
    wiki.mkdir(parents=True)
    rows = {
        "id": ["1", "2"],
        "url": ["u1", "u2"],
        "title": ["Paris", "Lyon"],
        "text": ["Paris est.", "Lyon est."],
    }
    pq.write_table(pa.table(rows), wiki / "train-00000-of-00001.parquet")
    docs = list(iter_documents(parse_source(f"wikipedia-hf:{wiki}#config=20231101.fr")))
    assert [(d.text, d.language) for d in docs] == [("Paris est.", "fr"), ("Lyon est.", "fr")]


def test_bookcorpus_books_and_hf_rows(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "b1.txt").write_text("Chapter one.\nIt was dark.\n")
    (books / "b2.txt").write_text("Another book.\n")
    docs = list(iter_documents(parse_source(f"bookcorpus:{books}")))
    assert [d.text for d in docs] == ["Chapter one.\nIt was dark.\n", "Another book.\n"] and docs[
        0
    ].language == "en"
    rows = tmp_path / "hf"
    rows.mkdir()
    (rows / "part.jsonl").write_text(
        "".join(json.dumps({"text": f"sentence {i} ."}) + "\n" for i in range(3000))
    )
    passages = list(iter_documents(parse_source(f"bookcorpus:{rows}")))
    assert 1 < len(passages) < 10 and passages[0].text.startswith("sentence 0 . sentence 1 .")
    assert sum(p.text.count("sentence") for p in passages) == 3000


def test_text_layouts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\ntwo\n\nthree\n")
    by = {
        doc: [d.text for d in iter_documents(parse_source(f"text:{path}#doc={doc}"))]
        for doc in ("blank", "line", "file")
    }
    assert by == {
        "blank": ["one\ntwo", "three"],
        "line": ["one", "two", "three"],
        "file": ["one\ntwo\n\nthree\n"],
    }


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nope:/x", "expected KIND:PATH"),
        ("cc100:/x#language=de", "bad option 'language=de'"),
        ("jsonl:", "empty PATH"),
    ],
)
def test_bad_source_specs(spec, message):
    with pytest.raises(DataError, match=message):
        parse_source(spec)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(DataError, match=r"no .txt/.txt.xz/.txt.bz2/.txt.gz files found"):
        list(iter_documents(parse_source(f"cc100:{tmp_path}/missing*.txt")))
