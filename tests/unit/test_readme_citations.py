"""Every comment, docstring or message that sends the reader to a section of a README (`README,
"Drift"`) names one that exists: a section renamed or split leaves no reference pointing nowhere.
A citation names a heading whole, the part of it before a colon ("Policy gates" for "Policy
gates: the pack at preview time"), or a paragraph's bold lead ("**Production edge.** With...")."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Final

from tests.paths import ROOT

# `README, "Drift"`, `README "Drift"`, `README.md "Configuration"`, `README ("Policy")`,
# `README's "Drift"`, and the same of e2e/README.md.
CITATION: Final = re.compile(
    r'(?P<readme>(?:e2e/)?README)(?:\.md)?(?:\'s)?,? \(?"(?P<section>[^"]+)"'
)
BOLD_LEAD: Final = re.compile(r"^\*\*(?P<lead>[^*]+?)\.\*\*")


def headings(readme: Path) -> set[str]:
    found: set[str] = set()
    for line in readme.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            found |= {heading, heading.partition(": ")[0]}
        elif lead := BOLD_LEAD.match(line):
            found.add(lead["lead"])
    return found


@functools.cache
def citations() -> list[tuple[str, str, str]]:
    """(where, README, section) of every citation outside Markdown, in the files git tracks."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name
        if path.suffix == ".md" or not path.is_file() or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in CITATION.finditer(line):
                found.append((f"{name}:{number}", match["readme"], match["section"]))
    return found


def test_the_citations_are_found() -> None:
    assert ("README", "Drift") in {(readme, section) for _, readme, section in citations()}


def test_every_cited_section_exists() -> None:
    sections = {readme: headings(ROOT / f"{readme}.md") for readme in ("README", "e2e/README")}
    missing = [
        f'{where}: {readme} "{section}"'
        for where, readme, section in citations()
        if section not in sections[readme]
    ]
    assert missing == []
