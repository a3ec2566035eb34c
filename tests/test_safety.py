"""Files are loaded safely and written safely.

- Loading never unpickles: a file crafted to run code when unpickled (a
  pickle, or torch.save's zip format) is refused with a CheckpointError that
  says why, and the code never runs (a marker file is never created).
- A checkpoint of another model configuration is refused, naming the keys.
- Every result file (checkpoints, tables, plots, JSON, configs) is written to
  a temporary file and renamed: a failure mid-write leaves the previous
  version intact. A scan of the source keeps it that way.
- A process killed (SIGKILL) while it writes checkpoints leaves a checkpoint
  that loads (see also tests/test_safety_kill.py for training and resume).
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from helpers import Payload
from mckd.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from mckd.io import atomic_write, atomic_write_text
from mckd.errors import CheckpointError, MckdError

ROOT = Path(__file__).resolve().parents[1]


def crafted_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Files that run code (create ``marker``) when unpickled, in the formats people hand over."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for protocol in (2, 4, 5):
        files[f"pickle{protocol}"] = folder / f"pickle{protocol}.safetensors"
        files[f"pickle{protocol}"].write_bytes(pickle.dumps({"model.w": Payload(marker)}, protocol=protocol))
    files["torch_save"] = folder / "torch_save.safetensors"
    torch.save({"model.w": Payload(marker)}, files["torch_save"])  # a zip archive with a pickle inside
    files["pickle0"] = folder / "pickle0.safetensors"  # protocol 0 has no PROTO opcode: no 0x80 first byte
    files["pickle0"].write_bytes(pickle.dumps(Payload(marker), protocol=0))
    return files


def test_the_crafted_files_do_run_code_when_unpickled(tmp_path):
    """The control: each crafted file is dangerous, so refusing it below means something."""
    for name, path in crafted_files(tmp_path / "files", tmp_path / "marker").items():
        marker = tmp_path / "marker"
        marker.unlink(missing_ok=True)
        if name == "torch_save":
            copy = tmp_path / "copy.pt"  # torch.load reads a .safetensors name as safetensors
            copy.write_bytes(path.read_bytes())
            torch.load(copy, weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.exists(), name


@pytest.mark.parametrize("name", ["pickle0", "pickle2", "pickle4", "pickle5", "torch_save"])
def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "marker"
    path = crafted_files(tmp_path / "files", marker)[name]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message
    assert "pickle" in message or "not a readable safetensors file" in message
    assert not marker.exists()


def test_a_crafted_checkpoint_given_to_the_cli_is_a_one_line_error_and_runs_nothing(tmp_path, capsys):
    from mckd.cli import main

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    crafted_files(tmp_path / "files", marker)["pickle4"].rename(run / "checkpoint.safetensors")
    (run / "config.yaml").write_text("task:\n  name: classification\n")
    for argv in (["evaluate", str(run), "--device", "cpu"],
                 ["train", "--resume", str(run)],
                 ["predict", str(run), "flair=x.nii.gz", "--out", str(tmp_path / "out.nii.gz"), "--device", "cpu"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mckd: error: ") and err.count("\n") == 1, err
        assert not marker.exists()
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "header too small"),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00{}", "not a readable safetensors file"),
        ((2**40).to_bytes(8, "little") + b"{}", "not a readable safetensors file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not a readable safetensors file"),
        (b"PK\x03\x04" + bytes(60), "zip archive"),
    ],
)
def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_a_checkpoint_error_at_every_length(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"a": torch.arange(64.0), "b": torch.ones(3, 3)}, {"iteration": 7})
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for length in range(0, len(data), 7):
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError):
            load_checkpoint(cut)


def test_checkpoint_metadata_that_is_not_a_mapping_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"mckd": "[1, 2]"})
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        load_checkpoint(path)
    save_file({"a": torch.zeros(1)}, str(path), metadata={"mckd": "{oops"})
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        load_checkpoint(path)


# --- A checkpoint of another model configuration -------------------------------------------


def _mlp(hidden: int, views: dict[str, int]) -> torch.nn.Module:
    from mckd.build import build_method, build_model
    from mckd.config import config_from_dict

    config = config_from_dict({"data": {"name": "multiview_digits"},
                               "model": {"name": "multiview_mlp", "hidden": hidden, "feature_dim": 8,
                                         "decoder_hidden": 16}})
    return build_model(config, tuple(views), {v: (d,) for v, d in views.items()}, 10, build_method(config, tuple(views)))


def test_a_checkpoint_of_another_model_configuration_is_refused_naming_the_keys(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trained = _mlp(32, {"fou": 76, "mor": 6})
    save_checkpoint(path, {f"model.{k}": v for k, v in trained.state_dict().items()}, {})
    tensors, _ = load_checkpoint(path)
    load_state_into(_mlp(32, {"fou": 76, "mor": 6}), tensors, "model.", str(path))  # the same configuration loads

    with pytest.raises(CheckpointError) as error:
        load_state_into(_mlp(16, {"fou": 76, "mor": 6}), tensors, "model.", str(path))
    message = str(error.value)
    assert "does not match this model configuration" in message and str(path) in message
    assert "encoders.fou.0.weight (32, 76) vs (16, 76)" in message

    with pytest.raises(CheckpointError) as error:
        load_state_into(_mlp(32, {"fou": 76, "kar": 64}), tensors, "model.", str(path))
    message = str(error.value)
    assert "missing ['encoders.kar.0.bias'" in message and "unexpected ['encoders.mor.0.bias'" in message


# --- Atomic writes ---------------------------------------------------------------------------


class PowerCut(Exception):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.suffixes)


def test_a_write_that_fails_midway_leaves_the_previous_file_intact_and_no_temporary_file(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "version 1\n")

    def half_then_crash(tmp: str) -> None:
        Path(tmp).write_text("version 2, half wri")
        raise PowerCut

    with pytest.raises(PowerCut):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "version 1\n"
    assert _leftovers(tmp_path) == []


def test_every_result_writer_keeps_the_previous_version_when_the_write_fails(tmp_path, monkeypatch):
    """Checkpoints, tables, plots and configs, each with its real writer, crash inside the write."""
    import mckd.io as io_module
    from mckd.config import config_from_dict, save_config
    from mckd.report import plot_subset_comparison, write_table

    rows = [{"subset": "a", "size": 1, "x": 0.5, "y": 0.25, "difference": 0.25}]
    config = config_from_dict({"data": {"name": "multiview_digits"}, "model": {"name": "multiview_mlp"}})
    writers = {
        "checkpoint.safetensors": lambda: save_checkpoint(tmp_path / "checkpoint.safetensors", {"w": torch.ones(2)}, {}),
        "subsets.csv": lambda: write_table(rows, tmp_path / "subsets"),
        "plot.png": lambda: plot_subset_comparison(rows, "x", "y", "acc", tmp_path / "plot.png"),
        "config.yaml": lambda: save_config(config, tmp_path / "config.yaml"),
    }
    for name, write in writers.items():
        write()
    before = {name: (tmp_path / name).read_bytes() for name in writers}

    real_replace = io_module.os.replace

    def crash_before_rename(src, dst):
        raise PowerCut  # the new version is complete in the temporary file, the rename never happens

    monkeypatch.setattr(io_module.os, "replace", crash_before_rename)
    for name, write in writers.items():
        with pytest.raises(PowerCut):
            write()
        assert (tmp_path / name).read_bytes() == before[name], name
    monkeypatch.setattr(io_module.os, "replace", real_replace)
    assert _leftovers(tmp_path) == []


# Writes that are not atomic_write: each is safe for the reason given.
ALLOWED_DIRECT_WRITES = {
    ("io.py", "atomic_write_text"): "writes the temporary file of atomic_write",
    ("checkpoint.py", "save_checkpoint"): "writes the temporary file of atomic_write",
    ("cache.py", "_prepare_one"): "writes into the staging folder that is renamed into place at the end",
    ("cache.py", "prepare_cache"): "writes into the staging folder that is renamed into place at the end",
}
WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save", "dump", "save_file", "to_csv", "tofile", "savez"}


def _direct_writes(path: Path) -> list[tuple[str, int, str]]:
    """``(function, line, call)`` for each write call in ``path`` not inside a lambda (atomic_write's argument)."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, function: str, in_lambda: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        in_lambda = in_lambda or isinstance(node, ast.Lambda)
        if isinstance(node, ast.Call) and not in_lambda:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            opens_for_writing = name == "open" and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
                for a in [*node.args, *[k.value for k in node.keywords if k.arg == "mode"]]
            )
            writes = name in WRITE_CALLS if isinstance(func, ast.Attribute) else name == "save_file"
            if writes or opens_for_writing:
                found.append((function, node.lineno, ast.unparse(node)[:80]))
        for child in ast.iter_child_nodes(node):
            visit(child, function, in_lambda)

    visit(tree, "<module>", False)
    return found


def test_result_files_are_written_only_through_atomic_write():
    offenders = []
    for path in sorted((ROOT / "src" / "mckd").rglob("*.py")):
        for function, line, call in _direct_writes(path):
            if (path.name, function) not in ALLOWED_DIRECT_WRITES and not call.startswith(("json.dumps", "yaml.")):
                offenders.append(f"{path.relative_to(ROOT)}:{line} in {function}: {call}")
    assert offenders == [], "write through mckd.io.atomic_write (or say why not here):\n" + "\n".join(offenders)


def test_errors_are_product_errors():
    from mckd import errors

    for name in ("ConfigError", "DataError", "CheckpointError", "MissingModalityError"):
        assert issubclass(getattr(errors, name), MckdError)


def test_a_full_disk_or_an_unwritable_place_is_a_product_error_and_keeps_the_previous_file(tmp_path):
    import errno

    target = tmp_path / "summary.md"
    atomic_write_text(target, "version 1\n")

    def disk_full(tmp: str) -> None:
        Path(tmp).write_text("version 2, ha")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MckdError, match="cannot write .*summary.md.*No space left on device.*previous version"):
        atomic_write(target, disk_full)
    assert target.read_text() == "version 1\n" and _leftovers(tmp_path) == []
    (tmp_path / "a_file").write_text("")
    with pytest.raises(MckdError, match="cannot write"):
        atomic_write_text(tmp_path / "a_file" / "table.csv", "x")


def test_atomic_writes_get_the_usual_permissions_not_mkstemps_owner_only(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        target = tmp_path / "table.md"
        atomic_write_text(target, "| a |\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
