"""The CLI answers before torch loads where it can: help, version, a missing config, a typo in a fixed section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from mckd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print("torch" in sys.modules, "monai" in sys.modules, code, file=sys.stderr)
"""


def run_fresh(*argv: str) -> tuple[bool, bool, int, str]:
    """Run ``mckd ARGV`` in a fresh interpreter: (torch imported, MONAI imported, exit code, stderr)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    *said, last = done.stderr.strip().splitlines()
    torch_loaded, monai_loaded, code = last.split()
    return torch_loaded == "True", monai_loaded == "True", int(code), "\n".join(said)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["predict", "--help"], ["train", "--help"]])
def test_help_and_version_answer_without_torch(argv):
    torch_loaded, _, code, _ = run_fresh(*argv)
    assert code == 0 and not torch_loaded


@pytest.mark.parametrize("text, message", [
    (None, "does not exist"),
    ("data: {name: files}\nmodel: {name: by_shape}\ntrain: {itertions: 10}\n", "unknown config key 'train.itertions'"),
    ("data: {name: files}\nmodel: {name: by_shape}\ntrain: {lr: fast}\n", "train.lr must be a number"),
    ("data: {name: files}\ntrian: {lr: 0.1}\n", "unknown config key 'trian'"),
    ("data: {name: files}\nseed: -3\n", "seed must be in"),
])
def test_config_errors_outside_the_open_sections_answer_without_torch(tmp_path: Path, text, message):
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    torch_loaded, _, code, said = run_fresh("train", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and message in said and not torch_loaded
    assert not (tmp_path / "run").exists()


def test_the_same_errors_are_given_by_a_full_config_check(tmp_path: Path):
    from mckd.config import load_config
    from mckd.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text("data: {name: files}\nmodel: {name: by_shape}\ntrain: {itertions: 10}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.itertions'"):
        load_config(config)


def test_list_loads_torch_but_not_monai():
    torch_loaded, monai_loaded, code, _ = run_fresh("list")
    assert code == 0 and torch_loaded and not monai_loaded
