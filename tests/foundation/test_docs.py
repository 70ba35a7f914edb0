"""The pages agree with the repository: every relative link resolves to a file in it, the prose repeats
the numbers of its own tables, the same result reads the same on every page, and the run directories the
pages name are ones a shipped config writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "slurm" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with ``header``."""
    rows = []
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _in_repository(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO) and path.exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_to_files_in_the_repository(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not _in_repository(page.parent / t.split("#")[0])]
    assert not missing, f"{page.relative_to(REPO)} links to {missing}, not in the repository"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_the_pages_name_stay_in_the_repository(page):
    """A ``../`` path in a page (a script to run, a page to read) must be a file of the repository."""
    outside = [
        path
        for path in re.findall(r"(?<![\w/.])\.\./[\w./-]*\w", page.read_text())
        if not any(_in_repository(base / path) for base in (page.parent, REPO))
    ]
    assert not outside, f"{page.relative_to(REPO)} sends the reader outside the repository: {outside}"


def test_benchmarks_reading_repeats_its_loader_table():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    rows = {row[0]: row for row in _rows(text, "| what | sequences/s |")}
    one_core = rows["stream, 1 core (num_workers=0)"]
    workers = next(row for name, row in rows.items() if "DataLoader workers" in name)
    naive = rows["naive: HF tokenizer in the DataLoader, 1 core"]
    tokens = float(one_core[2].replace(",", ""))
    reading = text[text.index("- **Stream**") : text.index("- **Prepare**")]
    for figure in (
        f"{tokens / 1e6:.1f}M tokens/s",
        f"{one_core[3]}x one H100",
        f"{float(one_core[4]):.0f}x the naive",
        f"{naive[3]}x",
        f"still {workers[3]}x",
    ):
        assert figure in " ".join(reading.split()), figure


def test_results_part_b_gives_the_readme_demo_numbers():
    readme = (REPO / "README.md").read_text()
    results = (REPO / "docs" / "results.md").read_text()
    demo = [float(row[-1]) for row in _rows(readme, "| model | held-out accuracy |")]
    part_b = results[results.index("### B1.") :]
    b1 = [float(row[-1]) for row in _rows(part_b, "| model | parameters | held-out accuracy |")]
    assert b1 == demo  # teacher, MiniLMv2 student, random init
    assert f"by {demo[1] - demo[2]:.1f} points" in part_b


def test_run_directories_the_pages_name_are_written_by_a_shipped_config():
    written = {
        yaml.safe_load(path.read_text())["train"]["output_dir"]
        for path in (REPO / "configs" / "experiments").glob("*.yaml")
    }
    named = {m for page in PAGES for m in re.findall(r"student\.init_from=(runs/[\w./-]+)", page.read_text())}
    assert named and named <= written, named - written
