"""The `mckd` command line end to end on tiny configs of the real digits, and `--help` everywhere."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import yaml

from mckd.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "multiview_digits.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser, nested ones included (``prepare <dataset>``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _commands(sub, (*prefix, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_cli_has_the_documented_commands():
    assert {("train",), ("evaluate",), ("compare",), ("benchmark",), ("list",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "mckd")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['mckd', *command])}")


@pytest.fixture(scope="module")
def tiny_config(digits_csv_dir, tmp_path_factory) -> Path:
    """Three views (7 subsets), 20 iterations: the digits config made tiny."""
    raw = yaml.safe_load(DIGITS.read_text())
    raw["data"].update(csv_dir=str(digits_csv_dir), views=["kar", "zer", "mor"])
    raw["model"].update(hidden=32, feature_dim=16, decoder_hidden=32)
    raw["method"]["meta_every"] = 4
    raw["train"].update(iterations=20, log_every=5, progress=False, device="cpu")
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_evaluate_compare_end_to_end(tiny_config, tmp_path, capsys):
    mckd, baseline, comparison = tmp_path / "mckd", tmp_path / "baseline", tmp_path / "comparison"
    assert main(["train", str(tiny_config), "--out", str(mckd)]) == 0
    assert main(["train", str(tiny_config), "--out", str(baseline), "--set", "method.alpha=0",
                 "--set", "method.meta=false"]) == 0
    assert [r["subset"] for r in _csv_rows(mckd / "eval" / "subsets.csv")] == [
        "kar", "zer", "mor", "kar+zer", "kar+mor", "zer+mor", "kar+zer+mor"]
    assert yaml.safe_load((baseline / "config.yaml").read_text())["method"]["alpha"] == 0.0
    capsys.readouterr()

    assert main(["evaluate", str(mckd), "--device", "cpu"]) == 0
    assert "| kar+zer+mor |" in capsys.readouterr().out

    assert main(["compare", str(mckd), str(baseline), "--names", "mckd", "baseline", "--out", str(comparison)]) == 0
    out = capsys.readouterr().out
    assert "one-tailed paired t-test" in out
    rows = _csv_rows(comparison / "comparison.csv")
    assert [r["subset"] for r in rows][-1] == "mean, over subsets" and len(rows) == 8
    for row in rows[:-1]:
        assert float(row["difference"]) == pytest.approx(float(row["mckd"]) - float(row["baseline"]))
    assert (comparison / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "t = " in (comparison / "comparison.md").read_text()


def test_train_over_seeds_reports_mean_and_std_per_subset(tiny_config, tmp_path):
    assert main(["train", str(tiny_config), "--out", str(tmp_path), "--seeds", "0", "1",
                 "--set", "train.iterations=8"]) == 0
    rows = _csv_rows(tmp_path / "subsets.csv")
    assert len(rows) == 7 and {"accuracy", "accuracy_std", "seeds"} <= set(rows[0])
    assert all(row["seeds"] == "2" for row in rows)
    assert (tmp_path / "seed_0" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "seed_1" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "weights.png").read_bytes()[:8] == PNG_MAGIC
    before = (tmp_path / "subsets.csv").read_text()
    (tmp_path / "subsets.csv").unlink()
    assert main(["evaluate", str(tmp_path), "--device", "cpu"]) == 0  # a multi-seed directory: each seed, the mean
    assert (tmp_path / "subsets.csv").read_text() == before and (tmp_path / "observed.csv").is_file()


def test_benchmark_writes_the_63_row_comparison_plots_and_summary(digits_csv_dir, tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", str(DIGITS), "--methods", "mckd", "baseline", "--seeds", "0", "1", "--out", str(out),
                 "--set", f"data.csv_dir={digits_csv_dir}", "--set", "train.iterations=6",
                 "--set", "train.log_every=3", "--set", "method.meta_every=2", "--set", "train.progress=false",
                 "--set", "train.device=cpu"])
    assert code == 0
    rows = _csv_rows(out / "compare_mckd_vs_baseline.csv")
    subsets = [r["subset"] for r in rows]
    assert len(subsets) == 64 and subsets[-1] == "mean, over subsets" and len(set(subsets[:-1])) == 63
    assert {"mckd", "baseline", "difference", "mckd_std", "baseline_std"} <= set(rows[0])
    for png in ("compare_mckd_vs_baseline.png", "mckd/weights.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
    assert not (out / "baseline" / "weights.png").exists()  # no meta step, no weights to plot
    for method in ("mckd", "baseline"):
        assert len(_csv_rows(out / method / "subsets.csv")) == 63
        assert (out / method / "seed_1" / "eval" / "subsets.csv").is_file()
    summary = (out / "summary.md").read_text()
    assert "Learned importance weights" in summary and "paired t-test" in summary


def test_a_config_error_names_the_key_and_exits_with_status_2(tiny_config, tmp_path, capsys):
    assert main(["train", str(tiny_config), "--out", str(tmp_path), "--set", "method.alpah=0.5"]) == 2
    err = capsys.readouterr().err
    assert "mckd: error:" in err and "method.alpah" in err and "did you mean 'alpha'" in err
    assert main(["train", str(tiny_config), "--out", str(tmp_path), "--set", "method.alpha=-1"]) == 2
    assert "method.alpha must be >= 0" in capsys.readouterr().err


def test_an_unknown_benchmark_method_lists_methods_and_presets_apart_and_suggests_one(tiny_config, tmp_path, capsys):
    from mckd import components

    preset = sorted(components.presets())[0]
    assert main(["benchmark", str(tiny_config), "--methods", "mckd", preset[:-1], "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    methods, presets = err.strip().split("; methods: ")[1].split("; presets: ")
    assert f"did you mean {preset!r}" in err
    assert methods.split(", ") == list(components.names("method"))
    assert presets.split(", ") == sorted(components.presets())
    assert not (tmp_path / "b").exists()


def test_evaluating_or_comparing_what_is_not_a_run_is_an_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no subsets.csv" in capsys.readouterr().err


def test_list_names_the_datasets_networks_and_methods(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "multiview_digits" in out and "multiview_mlp" in out and "baseline" in out
