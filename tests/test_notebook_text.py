"""Numbers typed into the book's prose.

Every number in a chapter's text must be computed in the run that shows it: a
sentence with a result is written by a code cell (``display(Markdown(f"..."))``
or MyST-NB's ``glue``), never typed into a markdown cell. This test scans
every markdown cell of ``notebooks/*.ipynb`` and ``book/index.md`` and fails
on each number that the allow-list below does not explain.

What counts as a number
-----------------------
Everything the project's pre-stop check flags (:data:`HOOK_PATTERN`, copied
verbatim from ``shared/hooks/before-stop``): decimals (``0.61``) and
percentages (``13%``, ``13 %``). In addition:

- integers with a thousands separator (``8,321 samples``): counts of samples
  and sites are results;
- a code span that holds nothing but a number (```0.61```), which the hook's
  regex lets through.

Bare integers without a separator (``3 layers``, ``chapter 04``, ``2017``)
are not flagged: in the prose they are counts of things in the design
(chapters, classes, bands, folds) far more often than results.

The allow-list
--------------
:data:`ALLOWED` is a short list of named patterns, each with the reason it is
allowed. Matches are blanked out before numbers are looked for. A number the
list does not cover must be computed, or, if it truly cannot change with the
run, the text must say where it comes from in a form the list knows (a
citation, a parameter name in a code span, a protocol length in metres).

:data:`DESIGN_CONSTANTS` lists, per file, exact phrases that state a
simulator constant that is fixed in the code (not a run result and not in
the parameter table). Each entry names the code it mirrors; edit it with the
simulator.

Known limit: a number typed into the f-string of a code cell is not seen here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PROSE_FILES = [*NOTEBOOKS, REPO / "book" / "index.md"]

#: The pre-stop check's pattern (shared/hooks/before-stop), verbatim.
HOOK_PATTERN = re.compile(r"(?<![\w.`])(\d+\.\d+|\d+(?:\.\d+)?\s?%)(?![\w`])")
#: Numbers flagged beyond the hook: thousands-separated integers, and any
#: decimal or percentage next to a backtick (inside a code span that is only a number).
EXTRA_PATTERNS = (
    re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w,])"),
    re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?:\.\d+)?\s?%)(?![\w])"),
)

_NUMBER = r"\d+(?:\.\d+)?"


@dataclass(frozen=True)
class Allowed:
    """A pattern of text whose numbers may be typed, and why."""

    name: str
    pattern: re.Pattern
    why: str


ALLOWED: tuple[Allowed, ...] = (
    Allowed("fenced code", re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE),
            "commands and code listings (the book's commands, not results)"),
    Allowed("code span", re.compile(r"`(?!\s*[~≈]?\d[\d.,]*\s?%?\s*`)[^`\n]+`"),
            "names of parameters, columns and functions (`n_pcs`, `ssl_0000`, `q10`); "
            "a code span that is only a number is not allowed"),
    Allowed("citation", re.compile(
        r"(?:et al\.,?\s+\d{4}[a-z]?|arXiv:?\s*\d{4}\.\d{4,5}(?:v\d+)?|\b[A-Z][A-Za-z]*"
        r"(?:\s[A-Z][a-z]+)?\s\d+:\d+)"),
        "references: 'et al. 2026', 'arXiv 2604.09818', 'Nature 645:414'"),
    Allowed("cross-reference", re.compile(
        r"\b(?:[Cc]hapters?|[Ss]ections?|[Tt]ables?|[Ff]ig(?:ure)?s?\.?|[Ee]q(?:uation)?s?\.?)"
        r"\s+S?\d+(?:\.\d+)*(?:\s?[–-]\s?S?\d+(?:\.\d+)*)?"),
        "chapter, section, table and figure numbers ('chapter 04', 'Tables S3–S5')"),
    Allowed("version", re.compile(r"\b(?:Python|[Vv]ersion|v)\s?\d+(?:\.\d+)+"),
            "software versions ('Python 3.11')"),
    Allowed("dimensions", re.compile(rf"{_NUMBER}\s?×\s?{_NUMBER}(?:\s?×\s?{_NUMBER})*"),
            "array and patch shapes ('3 × 3', '3 × 3 × 128')"),
    Allowed("split", re.compile(r"\b\d+\s?%?(?:\s?/\s?\d+\s?%?){1,3}\b"),
            "train/validation/test proportions of a protocol ('70/10/20', '70/30')"),
    Allowed("interval level", re.compile(
        r"\b(?:50|80|90|95|99)\s?%\s(?:(?:confidence|prediction|credible)\s)?(?:t-)?"
        r"(?:interval|CI|band)s?"),
        "the nominal level of an interval ('95% prediction interval', '95% t-interval')"),
    Allowed("cited figure", re.compile(
        r"(?:R²\s?>\s?0\.5\b|about 12,000 (?:soil )?samples|\(1,152 features\)"
        r"|10,000 times as many pixels)"),
        "the study's own figures (Kiers et al. 2026), stated as the study states them"),
)

#: Exact phrases stating simulator constants fixed in its code, per file (see module docstring).
DESIGN_CONSTANTS: dict[str, dict[str, str]] = {
    # empty: chapter 00 renders its simulator constants from fungi_ssl.simulate
    # (landscape.CLEAR_CUT_SHARE, sensors.STAND_BRIGHTNESS_SD, ...), so none is typed
}


@dataclass(frozen=True)
class TypedNumber:
    where: str
    number: str
    context: str

    def __str__(self) -> str:
        return f"{self.where}: {self.number!r} in ...{self.context}..."


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def typed_numbers(text: str, where: str = "", design: dict[str, str] | None = None,
                  ) -> list[TypedNumber]:
    """Numbers in markdown ``text`` that the allow-list does not explain."""
    masked = text
    for phrase in design or {}:
        for m in re.finditer(re.escape(phrase), masked):
            masked = _blank(masked, m.start(), m.end())
    for allowed in ALLOWED:
        for m in list(allowed.pattern.finditer(masked)):
            masked = _blank(masked, m.start(), m.end())
    spans: dict[tuple[int, int], str] = {}
    for pattern in (HOOK_PATTERN, *EXTRA_PATTERNS):
        for m in pattern.finditer(masked):
            if not any(s <= m.start() < e for s, e in spans):
                spans[(m.start(), m.end())] = m.group(0)
    found = []
    for (start, end), number in sorted(spans.items()):
        context = text[max(0, start - 30): end + 30].replace("\n", " ")
        found.append(TypedNumber(where, number, context))
    return found


def prose_cells(path: Path) -> list[tuple[str, str]]:
    """(location, markdown text) of a notebook's markdown cells, or of a markdown file."""
    if path.suffix == ".md":
        return [(path.name, path.read_text())]
    cells = json.loads(path.read_text())["cells"]
    return [(f"{path.name} cell {i} (id {c.get('id', '?')})", "".join(c["source"]))
            for i, c in enumerate(cells) if c["cell_type"] == "markdown"]


# ----------------------------------------------------------------- the book's prose


@pytest.mark.parametrize("path", PROSE_FILES, ids=[p.name for p in PROSE_FILES])
def test_no_typed_numbers_in_prose(path):
    design = DESIGN_CONSTANTS.get(path.relative_to(REPO).as_posix(), {})
    found = [n for where, text in prose_cells(path) for n in typed_numbers(text, where, design)]
    assert not found, (
        "numbers typed into the prose; compute them in the run "
        "(display(Markdown(f'...'))) or, for a fixed fact, use a form in ALLOWED:\n"
        + "\n".join(f"  {n}" for n in found)
    )


def test_design_constants_still_in_their_files():
    """A listed phrase that left its file is stale: remove it from the list."""
    for name, phrases in DESIGN_CONSTANTS.items():
        text = "".join(t for _, t in prose_cells(REPO / name))
        stale = [p for p in phrases if p not in text]
        assert not stale, f"{name}: DESIGN_CONSTANTS phrases no longer in the text: {stale}"


# ----------------------------------------------------------------- the scanner itself


@pytest.mark.parametrize("text", [
    "LightGBM reaches R² 0.61 on the ssl set.",
    "about 13% of the variance lies within sites",
    "about 13 % of the variance",
    "~2.2 samples per coordinate",
    "Spearman ρ is 0.96 in the real table.",
    "The real table has 8,321 samples with a value.",
    "an R² of `0.61`",
    "the share is `13%`",
    "(0.10)",
    "took 52.3 s",
    "3.5%/yr",
    "a 2.56 km window",
])
def test_scanner_flags_typed_results(text):
    assert typed_numbers(text), text


@pytest.mark.parametrize("text", [
    "Kiers et al. 2026 (arXiv 2604.09818) used 2017–2024 data.",
    "the SPUN maps (Van Nuland et al. 2025, Nature 645:414)",
    "Chapter 04 and chapters 04–05; Tables S3–S5; section 2.3",
    "the 3 × 3 pixel patch (3 × 3 × 128 numbers)",
    "10 m pixels, 1 km covariates and 50 km blocks",
    "random 70/10/20 splits, clusters split 70/30",
    "the parameter `n_pcs` and the column `ssl_0000`, quantile `q10`",
    "a 95% prediction interval and its 95% t-interval",
    "explains more than half of the variance (R² > 0.5)",
    "on Python 3.11",
    "```bash\nmake book PROFILE=full SEED=1.5\n```",
    "$$\\lambda = 5\\times 10^{-3}$$",
])
def test_scanner_allows_fixed_facts(text):
    assert not typed_numbers(text), typed_numbers(text)


def test_scanner_catches_everything_the_hook_catches():
    """Outside the allow-list, every hook match is also a hit here."""
    text = ("R² 0.61, 13%, 13 %, 0.96 and 2.2 samples; 12.5%; ratio 1.5 and "
            "x 0.3. Then 7% (shadow) and 14% of dates; end 3.25")
    hook = [m.group(0) for m in HOOK_PATTERN.finditer(text)]
    ours = [n.number for n in typed_numbers(text)]
    assert hook and ours == hook


def test_design_constants_apply_only_to_their_phrase():
    design = {"12% of non-ancient conifer and mixed stands": "an example constant"}
    assert not typed_numbers("12% of non-ancient conifer and mixed stands", design=design)
    assert typed_numbers("12% of samples are too shallow", design=design)


def test_front_page_lists_built_chapters_as_built():
    """book/index.md says in the present tense only what exists: its chapter list is exactly
    the chapters in notebooks/, and it speaks of no planned chapter (issue 16: it said both
    that chapters were planned and that every planned chapter was built)."""
    text = (REPO / "book" / "index.md").read_text()
    listed = text.split("## Chapters", 1)[1].split("\n## ", 1)[0]
    chapter = re.compile(r"^- \*\*(\d{2})\*\*", re.MULTILINE)
    have = {p.name[:2] for p in NOTEBOOKS if re.match(r"\d{2}_", p.name)}
    assert set(chapter.findall(listed)) == have
    assert "planned" not in text.lower()
