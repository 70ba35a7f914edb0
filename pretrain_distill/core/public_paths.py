"""How a file meant to be published (a model card, the run config beside an export) names local paths:
by their last component (the teacher's folder, the data file) or relative to the run (its checkpoint),
never by the absolute path of the machine that wrote it, which tells others the user's name, home and
file layout. The full paths only on request (``export --card-paths full``, ``card_paths: full``)."""

from __future__ import annotations

import re
from pathlib import Path

PATH_STYLES = ("names", "full")
_ABSOLUTE = re.compile(r"(?<![\w.~/-])(~?/[^\s'\"`,;:#={}\[\]()|<>]+)")
"""An absolute (or home-relative) path inside text: ``/home/me/data/dump.xml.bz2``, ``~/runs/x``; it ends
at whitespace, quotes, separators and a source spec's ``#option=value`` marks."""


def public_name(path: str | Path) -> str:
    """A local path by its last component (``/home/me/models/teacher-bert/`` -> ``teacher-bert``,
    ``runs/distill`` -> ``distill``); a name that is no local path (a hub id such as
    ``sentence-transformers/all-MiniLM-L6-v2``, ``minilm``) is kept."""
    text = str(path)
    local = _ABSOLUTE.fullmatch(text) or Path(text).expanduser().exists()
    return (Path(text.rstrip("/")).name or text) if local else text


def public_text(text: str) -> str:
    """``text`` (a source spec, a command line, a YAML file) with every absolute or ``~`` path replaced
    by its last component: ``text:/data/c/corpus.txt#doc=line`` -> ``text:corpus.txt#doc=line``."""
    return _ABSOLUTE.sub(lambda match: public_name(match.group(1)), text)
