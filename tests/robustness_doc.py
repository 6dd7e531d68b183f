"""Writes the tables of docs/robustness.md from the tests that produce them (deterministic: no timings, no
temporary paths), between `<!-- BEGIN name -->` / `<!-- END name -->` markers; the rest of the page is prose."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "robustness.md"


def _cell(text: object) -> str:
    s = " ".join(str(text if text is not None else "").split())
    s = s.replace("|", "\\|")
    return s if len(s) <= 400 else s[:397] + "..."


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> bool:
    """Replace the named section; returns True when the file changed."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = DOC.read_text() if DOC.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        new = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        new = text.rstrip() + "\n\n" + block + "\n"
    if new != text:
        DOC.write_text(new)
        return True
    return False
