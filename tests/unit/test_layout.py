"""The README's layout section names every module under app/ (a new module
that is not described there fails here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_entries() -> tuple[set[str], set[str]]:
    """(paths the README's layout block names, nested entries joined to their
    folder; the nested folders among them, described whole)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: set[str] = set()
    whole: set[str] = set()
    folder = ""
    for line in block.splitlines():
        match = re.match(r"^(\s*)(\S+)", line)
        if not match:
            continue
        indent, name = match.groups()
        if indent:
            entries.add(folder + name.rstrip("/"))
            if name.endswith("/"):
                whole.add(folder + name.rstrip("/"))
        else:
            folder = name if name.endswith("/") else ""
            entries.add(name.rstrip("/"))
    return entries, whole


def test_every_app_module_is_in_the_readme_layout() -> None:
    entries, whole = layout_entries()
    missing = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            continue
        # A module is named itself, or its folder is, whole (app/api/routes/).
        if rel not in entries and path.parent.relative_to(ROOT).as_posix() not in whole:
            missing.append(rel)
    assert not missing, f"README's layout omits: {missing}"


def test_the_layout_names_no_module_that_is_gone() -> None:
    entries, _ = layout_entries()
    gone = [e for e in entries if e.startswith("app") and not (ROOT / e).exists()]
    assert not gone, f"README's layout names what does not exist: {gone}"


def test_the_house_stays_small_at_the_root_and_per_room() -> None:
    """At most 10 modules at app/'s root; none over 300 lines (the layout issue's rule)."""
    root = [p for p in (ROOT / "app").glob("*.py") if p.name != "__init__.py"]
    assert len(root) <= 10, sorted(p.name for p in root)
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in (ROOT / "app").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, long
