"""Every document cited by the code and the recipes exists in ``docs/`` and has the cited section.

Citation grammar (what counts as a citation, and what it must resolve to):

* ``<path>.md`` followed, after an optional closing quote/backtick and an optional ``(``, by a list of
  references separated by ``,``, ``/``, ``;``, ``and`` or spaces. A reference is

  - ``§4``, ``§4.3`` or ``section 4.3``: a numbered section -> a heading ``## 4. ...`` / ``### 4.3 ...``;
  - ``Q12``: an official quirk -> a heading ``### Q12 ...``;
  - ``C.4``, ``section A``, ``part B``: a lettered part -> a heading ``## C.4 ...`` / ``## B. ...``;
  - ``"Saving"`` (a quoted name starting with a capital letter or digit, directly after the document name and an
    optional comma): a heading whose title contains that phrase (case-insensitive, whole words), e.g.
    ``## 5. Saving``. A quoted phrase after another reference (``§4.1 "Loss"``) only points inside that section.

  Examples: ``official.md §4.3, Q12``, ``docs/checkpoints.md §1/§2/§3.1``, ``(datasets.md §2.1)``,
  ``(``docs/design.md``, "Saving")``.
* A ``.md`` name without references is a citation when it is written ``docs/<name>.md`` or when ``<name>`` is a
  reference document (a file of ``docs/``, or one of the names that were cited before ``docs/`` existed).
* ``design contract N`` -> a heading ``N.`` in ``docs/design.md``.
* A bare ``Qn`` (not part of a citation above) -> quirk ``Qn`` of ``docs/official.md``.

Every citation must name a file in ``docs/`` (``<name>.md`` or ``docs/<name>.md`` for a file directly in it,
``docs/<folder>/<name>.md`` for one in a subfolder such as ``docs/peft_methods/``); a path anywhere else
is an error, except ``README.md`` and ``MODEL_CARD.md`` files, which may be named anywhere in the repository. Other
``.md`` mentions (output files such as ``benchmarks/RESULTS.md``) are not citations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE_DIRS = ("pointgst", "adapters", "backbones", "benchmarks", "scripts", "tests")
EXEMPT_NAMES = {"README.md", "MODEL_CARD.md"}
# documents cited before docs/ existed (they lived outside the repository): a bare mention is still a citation
LEGACY_NAMES = {"pointgst", "backbones", "datasets", "alt_modules", "peft_and_hub", "design"}

_REF = (r"(?:§\s?\d+(?:\.\d+)*"
        r"|Q\d{1,2}(?!\d)"
        r"|(?:section|part)\s+(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)*)\b"
        r"|[A-Z]\.\d+(?:\.\d+)*)")
_NAME_REF = r'"[A-Z0-9][^"\n]{0,60}"'  # only as the first reference: ``§4.1 "Loss"`` names a table row, not a heading
_SEP = r"(?:\s*(?:,|/|;|\band\b|&)\s*|\s+)"
CITATION = re.compile(
    r"(?P<path>(?<![\w./-])/?(?:[\w.-]+/)*[\w.-]+\.md)\b"
    r"(?:``|`|[\"'])?\s*,?\s*\(?\s*"
    rf"(?P<refs>{_NAME_REF}|{_REF}(?:{_SEP}{_REF})*)?"
)
REF = re.compile(f"{_NAME_REF}|{_REF}")
CONTRACT = re.compile(r"design contract (\d+)")
BARE_QUIRK = re.compile(r"(?<![\w§.])Q(\d{1,2})(?!\d)\b")


@dataclass(frozen=True)
class Citation:
    source: str  # "path:line"
    text: str
    document: str  # path as written
    label: str | None  # "4.3", "Q12", "C.4", '"Saving"' (a heading name), or None for the whole document


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _label(ref: str) -> str:
    ref = re.sub(r"^(?:§|section|part)\s*", "", ref.strip(), flags=re.I)
    return ref


def _reference_names() -> set[str]:
    return LEGACY_NAMES | {p.stem for p in DOCS.glob("*.md")}


def scan(path: Path) -> tuple[list[Citation], list[Citation]]:
    """(citations of documents, bare quirk references) in one file."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT).as_posix()
    citations, spans = [], []
    for m in CITATION.finditer(text):
        document, refs = m.group("path"), m.group("refs")
        where = f"{rel}:{_line(text, m.start())}"
        if Path(document).name in EXEMPT_NAMES:
            continue
        is_citation = bool(refs) or document.startswith(("docs/", "./docs/")) or "/docs/" in document \
            or Path(document).stem in _reference_names()
        if not is_citation:
            continue
        spans.append(m.span())
        labels = [_label(r) for r in REF.findall(refs)] if refs else [None]
        citations.extend(Citation(where, m.group(0).strip(), document, label) for label in labels)
    for m in CONTRACT.finditer(text):
        spans.append(m.span())
        citations.append(Citation(f"{rel}:{_line(text, m.start())}", m.group(0), "docs/design.md", m.group(1)))
    quirks = [Citation(f"{rel}:{_line(text, m.start())}", m.group(0), "docs/official.md", m.group(0))
              for m in BARE_QUIRK.finditer(text) if not any(a <= m.start() < b for a, b in spans)]
    return citations, quirks


def _heading_exists(document: Path, label: str) -> bool:
    if label.startswith('"'):
        name = re.escape(label.strip('"'))
        pattern = re.compile(rf"^#{{1,6}}[ \t].*(?<!\w){name}(?!\w)", re.M | re.I)
        return bool(pattern.search(document.read_text(encoding="utf-8")))
    pattern = re.compile(rf"^#{{1,6}}[ \t]+(?:§[ \t]*|(?:part|section)[ \t]+)?{re.escape(label)}\.?(?:[ \t]|$)",
                         re.M | re.I)
    return bool(pattern.search(document.read_text(encoding="utf-8")))


def _resolve(document: str) -> Path | None:
    """The file in docs/ a citation names, or None when it names a path outside docs/."""
    path = document
    for prefix in (str(ROOT) + "/", "./"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    if path.startswith("docs/"):  # a path under docs/ may name a subfolder (docs/peft_methods/dapt.md)
        return DOCS / path[len("docs/"):]
    return None if "/" in path else DOCS / path


def problems(citation: Citation) -> str | None:
    target = _resolve(citation.document)
    if target is None:
        return f"{citation.source}: {citation.text!r} names a document outside docs/"
    if not target.is_file():
        return f"{citation.source}: {citation.text!r}: docs/{target.relative_to(DOCS)} does not exist"
    if citation.label is not None and not _heading_exists(target, citation.label):
        return f"{citation.source}: {citation.text!r}: docs/{target.relative_to(DOCS)} has no heading for {citation.label}"
    return None


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))
             if "__pycache__" not in p.parts and p != Path(__file__).resolve()]
    return files + sorted((ROOT / "recipes").glob("*.yaml"))


SOURCES = _sources()


def test_reference_documents_exist():
    for name in ("official", "checkpoints", "datasets", "methods", "design"):
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    text = (DOCS / "official.md").read_text(encoding="utf-8")
    for n in range(1, 19):
        assert re.search(rf"^### Q{n}\b", text, re.M), f"docs/official.md has no heading for quirk Q{n}"


def test_grammar_examples():
    def labels(line: str) -> list[tuple[str, str | None]]:
        return [(m.group("path"), m.group("refs")) for m in CITATION.finditer(line)]

    assert labels("(official.md §4.3, Q12)") == [("official.md", "§4.3, Q12")]
    assert labels("``docs/checkpoints.md`` §1/§2/§3.1.") == [("docs/checkpoints.md", "§1/§2/§3.1")]
    assert labels("(checkpoints.md §6.1; official.md Q17)") == [("checkpoints.md", "§6.1"), ("official.md", "Q17")]
    assert labels("``methods.md`` C.4") == [("methods.md", "C.4")]
    assert labels("``docs/datasets.md`` section 2") == [("docs/datasets.md", "section 2")]
    assert labels("../shared/docs/official.md §3")[0][0] == "../shared/docs/official.md"
    assert labels('(``docs/design.md``, "Saving")') == [("docs/design.md", '"Saving"')]
    assert labels('(official.md §4.1 "Loss")') == [("official.md", "§4.1")]
    assert labels('``docs/methods.md``,\n"Deformable point layer": a design') == \
        [("docs/methods.md", '"Deformable point layer"')]
    assert [_label(r) for r in REF.findall("§4.5, §4.6, Q11, part B, section A, C.4")] == \
        ["4.5", "4.6", "Q11", "B", "A", "C.4"]
    assert _resolve("../shared/docs/official.md") is None and _resolve("docs/official.md") == DOCS / "official.md"
    assert _resolve("docs/peft_methods/dapt.md") == DOCS / "peft_methods" / "dapt.md" and _resolve("x/dapt.md") is None


def test_docs_cross_references_resolve():
    bad = []
    for doc in sorted(DOCS.glob("*.md")):
        citations, quirks = scan(doc)
        bad += [p for c in citations + quirks if (p := problems(c))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_citations_resolve(source: Path):
    citations, quirks = scan(source)
    bad = [p for c in citations + quirks if (p := problems(c))]
    assert not bad, "\n".join(bad)
