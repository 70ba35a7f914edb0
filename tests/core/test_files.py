"""Atomic directory publication (core/files.py) under several processes at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from pretrain_distill.core.files import publish_dir, staged_dir

FILES = 5


def _publish_rounds(target: str, writer: int, rounds: int, start: mp.synchronize.Barrier) -> None:
    start.wait()
    for r in range(rounds):
        with staged_dir(target) as staging:
            for i in range(FILES):
                (staging / f"part{i}.txt").write_text(f"{writer}:{r}")


def test_concurrent_publishers_each_publish_whole_and_leave_nothing_behind(tmp_path):
    """Four processes publish 100 times each to one directory: none fails, the target always holds one
    writer's complete set (never a mix, never missing files), and no temporary directory is left."""
    target = tmp_path / "out"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    workers = [ctx.Process(target=_publish_rounds, args=(str(target), w, 100, start)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    contents = {p.read_text() for p in target.iterdir()}
    assert len(list(target.iterdir())) == FILES and len(contents) == 1, contents
    assert contents.pop().endswith(":99")  # the last round of whichever writer published last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_publish_dir_replaces_an_existing_directory_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged = tmp_path / "new"
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    assert publish_dir(staged, target) == target
    assert [p.name for p in target.iterdir()] == ["new.txt"] and not staged.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_staged_dir_leaves_the_target_and_removes_its_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("earlier")
    with pytest.raises(RuntimeError, match="half way"), staged_dir(target) as staging:
        (staging / "partial.txt").write_text("x")
        raise RuntimeError("half way")
    assert [p.name for p in target.iterdir()] == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_directories_are_unique_per_writer(tmp_path):
    target = tmp_path / "out"
    with staged_dir(target) as first, staged_dir(target) as second:
        assert first != second and Path(first).parent == Path(second).parent == tmp_path
        assert first.name.startswith(".out.tmp-")
