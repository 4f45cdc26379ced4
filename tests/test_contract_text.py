"""The lifetime contract is written once, in membuf.h; the README restates it
in plain words for Python users.  This keeps the two numbered lists in step:
the same ten promises, in the same order, under the same names."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "src" / "membuf" / "include" / "membuf.h"
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="needs a source checkout (README.md)")


def _name(text):
    """The promise's name, compared without case, punctuation or markup."""
    return re.sub(r"[^a-z0-9_ ]", "", text.lower().replace("`", "")).strip()


def header_promises():
    block = HEADER.read_text().split("THE CONTRACT", 1)[1].split("THE FUNCTIONS", 1)[0]
    found = re.findall(r"^ \*\s+(\d+)\.\s+(?:!!! )?(.+?)(?:\.  |\s!!!|$)", block, re.M)
    return [(int(n), _name(title)) for n, title in found]


def readme_promises():
    block = README.read_text().split("## The lifetime contract", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^(\d+)\. \*\*(.+?)\*\*", block, re.M)
    return [(int(n), _name(title)) for n, title in found]


def test_the_readme_and_the_header_list_the_same_promises():
    header, readme = header_promises(), readme_promises()
    assert [n for n, _ in header] == list(range(1, 11))
    assert [n for n, _ in readme] == list(range(1, 11))
    for (n, ours), (_, theirs) in zip(header, readme):
        # The README may word a name for Python users, but not change it.
        assert ours.split()[0] == theirs.split()[0] or ours in theirs or theirs in ours, (n, ours,
                                                                                          theirs)
