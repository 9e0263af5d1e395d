"""docs/math.md is the math contract; the sources cite its sections as "docs/math.md §n".

These tests read files only (no torch, no kdops import): every section the repository cites exists,
the section numbering keeps its meaning, and no citation of the old, absent SPEC.md is left.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "docs/math.md"
THIS_FILE = "tests/docs/test_math_contract.py"

# "## 4. FGD global (relation) loss ..." -> section 4
HEADING = re.compile(r"^## (\d+)\. (.+?)\s*$", re.MULTILINE)
# A citation and the list or range that follows it: "docs/math.md §4", "§3-§4", "§2-4", "§1, §3", "§2 and §5".
# A list item needs its own "§" ("§5, 0/1 mask" cites §5 only); a range end may omit it ("§2-4").
CITATION = re.compile(r"docs/math\.md\s+§\s*(\d+)((?:\s*[-–]\s*§?\s*\d+|\s*,\s*§\s*\d+|\s+and\s+§\s*\d+)*)")
CONTINUATION = re.compile(r"([-–]|,|and)\s*§?\s*(\d+)")
# A section cited by name: docs/math.md "Shapes that matter".
NAMED = re.compile(r'docs/math\.md\s+"([^"\n]+)"')
# A Markdown table whose header says its "(§n)" cells are sections of the contract.
TABLE_HEADER = "docs/math.md section"
TABLE_CELL = re.compile(r"§\s*(\d+)((?:\s*[-–]\s*§?\s*\d+|\s*,\s*§\s*\d+)*)")
# What the old citations looked like; SPEC.md is not in the repository.
STALE = re.compile(r"\bSPEC\b")

# What each number means; a citation is only as good as this mapping.
MEANING = {
    0: "conventions",
    1: "attention masks",
    2: "box masks",
    3: "focal loss",
    4: "global",
    5: "feature imitation",
    6: "channel-wise distillation",
    7: "head distillation",
    8: "pseudo-labels",
    9: "shapes that matter",
}


def contract_text() -> str:
    return (ROOT / CONTRACT).read_text(encoding="utf-8")


def sections(text: str) -> dict:
    """{number: title} of the '## <n>. <title>' headings."""
    found = {}
    for m in HEADING.finditer(text):
        n = int(m.group(1))
        assert n not in found, f"{CONTRACT}: section {n} appears twice"
        found[n] = m.group(2)
    return found


def expand(first: str, tail: str) -> list:
    """The section numbers of one citation: '3' + '-§4' -> [3, 4]; '1' + ', §3' -> [1, 3]."""
    numbers = [int(first)]
    for sep, n in CONTINUATION.findall(tail):
        n = int(n)
        if sep in ("-", "–"):
            numbers.extend(range(numbers[-1] + 1, n + 1) if n > numbers[-1] else [n])
        else:
            numbers.append(n)
    return numbers


def cited_sections(text: str) -> list:
    """[(line, section number)] of every numbered citation in `text`."""
    out = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.extend((line, n) for n in expand(m.group(1), m.group(2)))
    in_table = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        if TABLE_HEADER in line:
            in_table = True
            continue
        if in_table:
            for m in TABLE_CELL.finditer(line):
                out.extend((line_no, n) for n in expand(m.group(1), m.group(2)))
    return out


def repository_files() -> list:
    """Relative paths of the tracked files, plus new files git does not ignore (not yet committed)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the repository's files")
    return sorted({p for p in listed.split("\0") if p and (ROOT / p).is_file()})


def text_files():
    """(path, text) of every readable text file of the repository except the contract and this test."""
    for path in repository_files():
        if path in (CONTRACT, THIS_FILE):
            continue
        data = (ROOT / path).read_bytes()
        if b"\0" in data:
            continue  # binary
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_citation_parser():
    def numbers(text):
        return [n for _, n in cited_sections(text)]

    assert numbers("see docs/math.md §4.") == [4]
    assert numbers("(docs/math.md §3-§4)") == [3, 4]
    assert numbers("(docs/math.md §2-4)") == [2, 3, 4]
    assert numbers("(docs/math.md §1, §3), shared") == [1, 3]
    assert numbers("(docs/math.md §5, 0/1 mask of docs/math.md §2: the") == [5, 2]
    assert numbers("docs/math.md §2 and §5") == [2, 5]
    assert numbers("| op | what (docs/math.md section) |\n|---|---|\n| `a` | x (§1) |\n| `b` | y (§2-§4) |\n\n(§9)") \
        == [1, 2, 3, 4]
    assert numbers("Chen 2017 §3.4, SPEC-free text") == []


def test_contract_sections_keep_their_meaning():
    found = sections(contract_text())
    assert sorted(found) == list(range(len(found))), f"{CONTRACT}: sections must be numbered 0, 1, 2, ...: {found}"
    for n, meaning in MEANING.items():
        assert n in found, f"{CONTRACT}: section {n} ({meaning}) is missing"
        assert meaning in found[n].lower(), f"{CONTRACT}: section {n} should be about {meaning!r}, got {found[n]!r}"


def test_every_cited_section_exists():
    found = sections(contract_text())
    citations, dangling = 0, []
    for path, text in text_files():
        for line, n in cited_sections(text):
            citations += 1
            if n not in found:
                dangling.append(f"{path}:{line}: docs/math.md §{n}")
    assert not dangling, f"citations of sections {CONTRACT} does not have:\n" + "\n".join(dangling)
    # The sources cite the contract about 125 times; far fewer means the scan itself broke.
    assert citations >= 100, f"only {citations} citations of {CONTRACT} found; is the scan still working?"


def test_every_named_section_exists():
    titles = [t.lower() for t in sections(contract_text()).values()]
    named, dangling = 0, []
    for path, text in text_files():
        cited = [(m.start(1) - 1, m.group(1)) for m in NAMED.finditer(text)]
        # "Shapes that matter" is cited by name even where the file name is left out.
        seen = {start for start, _ in cited}
        cited += [(m.start(), "Shapes that matter") for m in re.finditer(r'"Shapes that matter"', text)
                  if m.start() not in seen]
        for start, name in cited:
            named += 1
            if not any(name.lower() in t for t in titles):
                dangling.append(f'{path}:{text.count(chr(10), 0, start) + 1}: {CONTRACT} "{name}"')
    assert not dangling, f"named sections {CONTRACT} does not have:\n" + "\n".join(dangling)
    assert named >= 2, "benchmarks/common.py and benchmarks/head_shapes.py cite \"Shapes that matter\""


def test_no_stale_spec_citations():
    stale = []
    for path, text in text_files():
        for m in STALE.finditer(text):
            line_no = text.count("\n", 0, m.start()) + 1
            stale.append(f"{path}:{line_no}: {text.splitlines()[line_no - 1].strip()[:100]}")
    assert not stale, f"citations of the absent SPEC.md; cite {CONTRACT} instead:\n" + "\n".join(stale)


def test_contract_names_every_public_op_and_module():
    text = contract_text()
    ops = sorted(p.stem for p in (ROOT / "kdops" / "ops").glob("*.py") if not p.stem.startswith("_"))
    assert ops, "no ops found in kdops/ops/"
    missing = [f"kdops.{op}" for op in ops if f"kdops.{op}" not in text]
    init = (ROOT / "kdops" / "nn" / "__init__.py").read_text(encoding="utf-8")
    modules = re.findall(r'"(\w+)"', init[init.index("__all__"):])
    missing += [f"kdops.nn.{m}" for m in modules if f"kdops.nn.{m}" not in text]
    assert not missing, f"{CONTRACT} does not document: {', '.join(missing)}"
