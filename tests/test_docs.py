"""The README and the design notes state what holds and link to benchmarks/RESULTS.md for what was measured on
one day on one machine: every link into a Markdown file names a heading it has, and no dated figure is left."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/design.md", "docs/map.md", "benchmarks/RESULTS.md")
STATEMENTS = ("README.md", "docs/design.md")  # where measured figures do not belong
LINK = re.compile(r"\]\(([^)\s#]*\.md)?(?:#([^)\s]+))?\)")
# A measurement's marks: the day it was taken, a rate, a speed-up ("2.0×", "1.7–2.0×"), an interval
# ("30.9 ± 11.7 %"; a placeholder "<mean> ± <half-width>" is a form, not a figure).
MEASURED = re.compile(r"\b20\d\d-\d\d-\d\d\b|\d images/s|\d(?:\.\d+)?× |\d ± \d")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {github_anchor(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_anchor_follows_githubs_rules():
    assert github_anchor("Faults") == "faults"
    assert github_anchor("The demo's record and disk: 2-core CPU (torch 2.14.1, ray 2.60.0, mlflow 3.17.2), "
                         "2026-12-03") == "the-demos-record-and-disk-2-core-cpu-torch-2141-ray-2600-mlflow-3172-2026-12-03"


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_into_a_markdown_file_names_a_heading_it_has(doc):
    source = ROOT / doc
    links = LINK.findall(source.read_text(encoding="utf-8"))
    for target, anchor in links:
        path = (source.parent / target).resolve() if target else source
        assert path.is_file(), f"{doc} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(path), f"{doc} links to {target or doc}#{anchor}: no such heading"


@pytest.mark.parametrize("doc", STATEMENTS)
def test_measured_figures_live_in_results_md(doc):
    text = re.sub(r"\]\([^)]*\)", "]", (ROOT / doc).read_text(encoding="utf-8"))  # a link's target may be dated
    found = [line for line in text.splitlines() if MEASURED.search(line)]
    assert not found, f"{doc} holds figures measured on one day; move them to benchmarks/RESULTS.md: {found}"
