"""The README and docs/ hold together: docs/results.md is exactly what benchmarks/results_page.py writes from
benchmarks/results/*.json, and every relative link in them leads to a file (and heading) that exists."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)

sys.path.insert(0, str(REPO / "benchmarks"))
import results_page  # noqa: E402


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {results_page.anchor(h.strip()) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in LINK.findall(text)]


def test_the_results_page_is_what_the_script_writes_from_the_committed_figures():
    assert (REPO / "docs" / "results.md").read_text(encoding="utf-8") == results_page.render(), \
        "docs/results.md is out of date: run python benchmarks/results_page.py"


@pytest.mark.parametrize("state, shows_test_folds", [
    ({"winner": "D", "not_run": {}}, True),  # every candidate screened: D chosen, not confirmed
    ({"winner": "A", "leading": "A", "confirmation": None, "confirmations": {}, "not_run": {}}, False),  # none beat A
    ({"winner": None, "not_run": {}, "not_finished": {"B": "25 epochs"}}, False),  # one still training: no choice yet
])
def test_test_fold_figures_appear_on_the_results_page_only_after_the_choice(state, shows_test_folds, monkeypatch):
    screening = {**results_page.SCREENING.load(), **state}
    monkeypatch.setattr(results_page, "SCREENING", type("Fixed", (), {"load": lambda self: screening,
                                                                       "cite": lambda self: ""})())
    assert ("After the choice" in results_page.screening()) is shows_test_folds


def test_the_results_page_refuses_to_label_one_candidates_test_folds_with_anothers_name(monkeypatch):
    screening = {**results_page.SCREENING.load(), "winner": "D", "not_run": {}}
    monkeypatch.setattr(results_page, "SCREENING", type("Fixed", (), {"load": lambda self: screening,
                                                                       "cite": lambda self: ""})())
    monkeypatch.setattr(results_page, "WINNER", "B")
    with pytest.raises(SystemExit, match="holds B's figures"):
        results_page.screening()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert page.is_file(), f"{page.name} is missing"
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no network)
        path, _, fragment = unquote(target).partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
