"""The CLI answers before torch loads where it can: help, version, list, a missing config, a typo anywhere in a config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.parametrize("text, message", [
    ("data: {name: files, modalitis: {}}\nmodel: {name: by_shape}\n", "unknown config key 'data.modalitis'"),
    ("data: {name: files, modalities: {a: {path: a.npy, colums: [x]}}}\nmodel: {name: by_shape}\n",
     "unknown config key 'data.modalities.a.colums'"),
    ("data: {name: multiview_digits}\nmodel: {name: multiview_mlp, fill: meen}\n", "model.fill must be one of"),
    ("data: {name: multiview_digits}\nmodel: {name: multiview_mlp}\nmethod: {name: mckd, alpha: high}\n",
     "method.alpha must be a number"),
    ("data: {name: multiview_digits}\nmodel: {name: multiview_mlp}\nmethod: {name: baseline}\n", "is a preset"),
    ("data: {name: multiview_digits}\nmodel: {name: mlp}\n", "model.name 'mlp' is not known"),
])
def test_config_errors_in_the_open_sections_answer_without_torch_as_the_full_check_does(tmp_path: Path, text,
                                                                                         message):
    from mckd.config import load_config
    from mckd.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text(text)
    torch_loaded, _, code, said = run_fresh("train", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and message in said and not torch_loaded
    with pytest.raises(ConfigError) as full:
        load_config(config)
    assert said == f"mckd: error: {full.value}"


def test_every_shipped_config_passes_the_check_before_torch():
    from mckd.config import check_open_sections, load_raw

    for config in sorted((ROOT / "configs").glob("*.yaml")):
        if "name:" in config.read_text():  # layouts and split files are not experiment configs
            check_open_sections(load_raw(config))


def test_the_shipped_catalog_matches_the_registries():
    done = subprocess.run([sys.executable, "-m", "mckd.catalog", "--check"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_catalog_whose_sources_changed_is_not_used(tmp_path: Path, monkeypatch):
    from mckd import catalog

    data = json.loads(catalog.CATALOG_FILE.read_text())
    data["sources"]["method/mckd.py"] = "0" * 64  # as after an edit of the MCKD method's file
    stale = tmp_path / "catalog.json"
    stale.write_text(json.dumps(data))
    monkeypatch.setattr(catalog, "CATALOG_FILE", stale)
    catalog.builtin_catalog.cache_clear()
    try:
        assert catalog.builtin_catalog() is None
    finally:
        catalog.builtin_catalog.cache_clear()


def test_list_answers_without_torch_and_says_what_the_components_say():
    torch_loaded, _, code, _ = run_fresh("list")
    assert code == 0 and not torch_loaded
    early = subprocess.run([sys.executable, "-m", "mckd.cli", "list"], capture_output=True, text=True, timeout=120)
    from mckd import catalog

    assert "\n".join(catalog.listing(catalog.snapshot(builtin_only=False))) in early.stdout
