"""The documentation: the README and the docs/ site build strictly, and what their commands name exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
# a command line in a code block: optional VAR=value prefixes, then mckd (from .venv/bin or on PATH), or "$ mckd"
COMMAND = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?mckd ([a-z][a-z-]*)", re.M)
REPO_FILE = re.compile(r"(?<![\w/.])((?:configs|benchmarks|examples)/[\w./-]+\.(?:yaml|py|sh))")


def test_the_site_builds_strictly(tmp_path):
    """Every page is in the navigation, every link resolves (mkdocs --strict fails on a warning)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "segmentation" / "index.html").is_file()


def test_every_command_in_the_pages_exists():
    from mckd.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    named = {(page.name, name) for page in PAGES for block in FENCE.findall(page.read_text())
             for name in COMMAND.findall(block)}
    assert {"train", "predict", "prepare"} <= {name for _, name in named}
    unknown = sorted((page, name) for page, name in named if name not in commands)
    assert not unknown, f"commands the CLI does not have: {unknown}"


def test_every_file_the_pages_name_exists():
    named = {(page.name, path) for page in PAGES for path in REPO_FILE.findall(page.read_text())}
    missing = sorted((page, path) for page, path in named if not (ROOT / path).exists())
    assert not missing, f"files named in the documentation that the repository lacks: {missing}"
