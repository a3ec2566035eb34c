"""``mckd train`` (and ``--resume``) given bad configs, paths, numbers, data files and checkpoints.

Each ends in one ``mckd: error:`` line naming the key, file or option, with
no run directory left behind (or the existing run as it was); a resource
asked beyond the machine is capped with one warning.
"""

from __future__ import annotations

import numpy as np
import pytest

from hostile.kit import Case, Cases, World, pickled_payload, run_case, write_yaml

CASES = Cases()
LONG = "n" * 300


def _config(w: World, name: str, text: str):
    path = w.fresh(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_yaml(path, text)


def _train(w: World, *more, config=None) -> tuple[list, list]:
    out = w.fresh("run")
    return ["train", config or w.digits_yaml, "--out", out, *more], [out]


# --- paths: the one validator ------------------------------------------------------------------------------


@CASES
def out_with_a_name_too_long_for_the_file_system(w: World) -> Case:
    out = w.fresh("x") / LONG
    return Case(["train", w.digits_yaml, "--out", out], ["argument --out", "a name of 300 bytes", "at most 255"], [out])


@CASES
def a_config_path_value_with_a_nul_byte(w: World) -> Case:
    config = _config(w, "nul.yaml", w.digits_yaml.read_text().replace(f"csv_dir: {w.csv}", 'csv_dir: "a\\0b"'))
    argv, outs = _train(w, config=config)
    return Case(argv, ["data.csv_dir", "NUL byte"], outs)


@CASES
def a_config_path_value_naming_an_unknown_users_home(w: World) -> Case:
    argv, outs = _train(w, "--set", "data.csv_dir=~no_such_user_here/csv")
    return Case(argv, ["data.csv_dir", "unknown user"], outs)


@CASES
def a_config_path_value_longer_than_any_path(w: World) -> Case:
    argv, outs = _train(w, "--set", "data.csv_dir=/" + "d/" * 3000)
    return Case(argv, ["data.csv_dir", "paths hold at most 4,095"], outs)


@CASES
def a_huge_value_is_shown_cut_to_80_characters(w: World) -> Case:
    config = _config(w, "huge.yaml", w.digits_yaml.read_text().replace("  device: cpu", "  device: " + "x" * 3_000_000))
    argv, outs = _train(w, config=config)
    return Case(argv, ["train.device", "xxx... (3,000,002 characters)"], outs)


@CASES
def a_config_that_is_a_folder(w: World) -> Case:
    argv, outs = _train(w, config=w.csv)
    return Case(argv, ["is a folder, not a file"], outs)


@CASES
def a_data_file_that_is_a_folder_says_so(w: World) -> Case:
    csv = w.copy(w.csv, "csv_folder")
    (csv / "mfeat-fou.csv").unlink()
    (csv / "mfeat-fou.csv").mkdir()
    argv, outs = _train(w, "--set", f"data.csv_dir={csv}")
    return Case(argv, ["mfeat-fou.csv", "is a folder, not a file"], outs)


# --- configs: nesting, optimiser settings torch refuses, devices, policies ------------------------------------


@CASES
def a_config_nested_thousands_of_levels(w: World) -> Case:
    argv, outs = _train(w, config=_config(w, "deep.yaml", "data: " + "[" * 3000 + "]" * 3000 + "\n"))
    return Case(argv, ["nests more than 100 levels deep"], outs)


@CASES
def a_set_value_nested_thousands_of_levels(w: World) -> Case:
    argv, outs = _train(w, "--set", "train.lr=" + "[" * 3000 + "]" * 3000)
    return Case(argv, ["--set train.lr", "nests more than 100 levels deep"], outs)


def _setting(name: str, sets: list[str], words: list[str]):
    def build(w: World) -> Case:
        more = [item for key in sets for item in ("--set", key)]
        argv, outs = _train(w, *more)
        return Case(argv, words, outs)
    build.__name__ = name
    return build


for _name, _sets, _words in [
    ("sgd_with_a_negative_momentum", ["train.optimizer=sgd", "train.momentum=-0.5"], ["train.momentum", "[0, 1)"]),
    ("nesterov_without_momentum", ["train.optimizer=sgd", "train.momentum=0"], ["train.nesterov", "momentum > 0"]),
    ("a_negative_poly_power", ["train.schedule=poly", "train.poly_power=-1"], ["train.poly_power", ">= 0"]),
    ("the_meta_device", ["train.device=meta"], ["train.device 'meta'", "cpu or cuda"]),
    ("a_cpu_index", ["train.device=cpu:3"], ["train.device 'cpu:3'"]),
    ("all_modalities_at_rate_zero", ["missing.policy=rates", "missing.rates={fou: 0, mor: 0}"],
     ["missing.rates", "without a modality"]),
    ("a_fixed_subset_naming_a_modality_twice", ["missing.policy=fixed", "missing.subset=[fou, fou]"],
     ["missing.subset", "more than once"]),
]:
    CASES(_setting(_name, _sets, _words))


@CASES
def a_weight_decay_that_overflows_the_optimiser_state(w: World) -> Case:
    argv, outs = _train(w, "--set", "train.weight_decay=1e30")
    return Case(argv, ["training diverged", "optimiser's state", "nothing was kept"], outs)


@CASES
def a_model_too_large_for_memory(w: World) -> Case:
    argv, outs = _train(w, "--set", "model.hidden=100000000")
    return Case(argv, ["ran out of memory", "a smaller model"], outs)


# --- resources: capped at the machine, with a warning -----------------------------------------------------


@CASES
def threads_and_loader_workers_beyond_the_cpus_are_capped(w: World) -> Case:
    argv, outs = _train(w, "--set", "train.threads=100000", "--set", "train.num_workers=100000")
    return Case(argv, [], [], code=0, warns=["train.threads 100,000 is more than this machine's CPUs",
                                             "train.num_workers 100,000"])


# --- the user's own files ---------------------------------------------------------------------------------


def _own(w: World, name: str, source: str, files: dict) -> tuple[list, list]:
    """Train on the own-data table plus a modality ``x`` read from ``source`` (made by ``files``)."""
    folder = w.copy(w.own, name)
    for file, write in files.items():
        write(folder / file)
    config = _config(w, f"{name}.yaml", w.own_yaml.read_text().replace(str(w.own), str(folder)).replace(
        "model:", f"    x: {{{source}}}\nmodel:"))
    out = w.fresh("run")
    return ["train", config, "--out", out], [out]


def _ids(path, count=120):
    path.write_text("\n".join(f"s{i}" for i in range(count)) + "\n")


def _npy_header(path, shape, descr="<f4", data=b""):
    from numpy.lib import format as npy

    with path.open("wb") as stream:
        npy.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
        stream.write(data)


@CASES
def an_npy_header_claiming_a_trillion_rows(w: World) -> Case:
    argv, outs = _own(w, "huge_npy", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: _npy_header(p, (10**12, 4), data=bytes(64)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "claims an array of", "more than this machine's memory"], outs)


@CASES
def an_npy_header_claiming_more_than_the_file_holds(w: World) -> Case:
    argv, outs = _own(w, "short_npy", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: _npy_header(p, (120, 4), data=bytes(64)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "holds 64 bytes", "truncated"], outs)


@CASES
def an_npz_member_claiming_a_trillion_rows(w: World) -> Case:
    import zipfile

    def write(path):
        member = path.with_name("data.npy")
        _npy_header(member, (10**12, 4), data=bytes(64))
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(member, "data.npy")
            np.save(path.with_name("id.npy"), np.array([f"s{i}" for i in range(120)]))
            archive.write(path.with_name("id.npy"), "id.npy")
    argv, outs = _own(w, "huge_npz", "path: x.npz", {"x.npz": write})
    return Case(argv, ["x.npz", "array 'data'", "more than this machine's memory"], outs)


@CASES
def complex_values(w: World) -> Case:
    argv, outs = _own(w, "complex", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.ones((120, 3), np.complex64) * (1 + 2j)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "holds complex numbers"], outs)


@CASES
def text_values(w: World) -> Case:
    argv, outs = _own(w, "text", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.full((120, 3), "a")), "ids.txt": _ids})
    return Case(argv, ["x.npy", "holds text"], outs)


@CASES
def float64_values_beyond_float32(w: World) -> Case:
    argv, outs = _own(w, "overflow", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.full((120, 3), 1e300)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "beyond what float32 holds"], outs)


@CASES
def a_pickled_object_array(w: World) -> Case:
    argv, outs = _own(w, "objects", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.array([[w.marker]] * 120, dtype=object), allow_pickle=True),
                       "ids.txt": _ids})
    return Case(argv, ["x.npy", "Python objects", "never loads pickles"], outs)


@CASES
def a_pickle_named_npy(w: World) -> Case:
    argv, outs = _own(w, "pickle_npy", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: p.write_bytes(pickled_payload(w.marker)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "is not a .npy or .npz file"], outs)


@CASES
def an_npz_named_npy(w: World) -> Case:
    argv, outs = _own(w, "npz_as_npy", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.savez(p.with_suffix(".tmp.npz"), data=np.ones((120, 3))) or
                       p.with_suffix(".tmp.npz").rename(p), "ids.txt": _ids})
    return Case(argv, ["x.npy", "is an .npz archive though it is named .npy"], outs)


@CASES
def zero_width_features(w: World) -> Case:
    argv, outs = _own(w, "zero_width", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.ones((120, 0), np.float32)), "ids.txt": _ids})
    return Case(argv, ["x.npy", "(120, 0)", "holds no values"], outs)


@CASES
def an_ids_file_that_is_not_text(w: World) -> Case:
    argv, outs = _own(w, "binary_ids", "path: x.npy, ids: ids.txt",
                      {"x.npy": lambda p: np.save(p, np.ones((120, 3), np.float32)),
                       "ids.txt": lambda p: p.write_bytes(bytes(range(128, 256)))})
    return Case(argv, ["ids.txt", "is not text (UTF-8)"], outs)


@CASES
def presence_flags_as_text_zero_and_one_are_read_as_absent_and_present(w: World) -> Case:
    def write(path):
        ids = np.array([f"s{i}" for i in range(120)])
        np.savez(path, id=ids, data=np.ones((120, 3), np.float32), present=np.array(["1", "0"] * 60))
    argv, outs = _own(w, "text_flags", "path: x.npz", {"x.npz": write})
    out = outs[0]

    def half_have_x() -> list[str]:
        import csv

        text = (out / "eval" / "patterns.csv").read_text()
        rows = {r["pattern"]: int(r["total"]) for r in csv.DictReader((out / "eval" / "patterns.csv").open())}
        with_x = sum(n for pattern, n in rows.items() if "x" in pattern.split("+"))
        return [] if with_x == 60 else [f"{with_x} of 120 samples have x, not the 60 flagged '1': {text}"]
    return Case(argv, [], [], code=0, after=half_have_x)


@CASES
def presence_flags_that_are_neither_present_nor_absent(w: World) -> Case:
    def write(path):
        ids = np.array([f"s{i}" for i in range(120)])
        np.savez(path, id=ids, data=np.ones((120, 3), np.float32), present=np.array(["1", "maybe"] * 60))
    argv, outs = _own(w, "odd_flags", "path: x.npz", {"x.npz": write})
    return Case(argv, ["x.npz", "presence flags", "'maybe'"], outs)


@CASES
def a_table_with_a_column_name_twice(w: World) -> Case:
    def write(path):
        lines = path.with_name("table.csv").read_text().splitlines()
        lines[0] = lines[0].replace("b2", "b1")
        path.write_text("\n".join(lines) + "\n")
    argv, outs = _own(w, "twice", "path: twice.csv, columns: ['b*']", {"twice.csv": write})
    return Case(argv, ["twice.csv", "'b1'", "more than once"], outs)


@CASES
def a_modality_name_with_a_plus(w: World) -> Case:
    folder = w.copy(w.own, "plus_name")
    config = _config(w, "plus.yaml", w.own_yaml.read_text().replace(str(w.own), str(folder)).replace(
        "    b: {path", "    b+c: {path"))
    argv, outs = _train(w, config=config)
    return Case(argv, ["modality name 'b+c'", "'+'"], outs)


@CASES
def a_modality_name_with_a_slash(w: World) -> Case:
    folder = w.copy(w.own, "slash_name")
    config = _config(w, "slash.yaml", w.own_yaml.read_text().replace(str(w.own), str(folder)).replace(
        "    b: {path", "    b/c: {path"))
    argv, outs = _train(w, config=config)
    return Case(argv, ["modality name 'b/c'", "'/'"], outs)


def _bomb_png(path) -> None:
    """A small PNG whose header claims 20000 x 20000 pixels (a decompression bomb, without its bytes)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", 20000, 20000) + bytes(data[24:29])  # width, height, then depth, colour, ...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    path.write_bytes(bytes(data))


@CASES
def a_decompression_bomb_image(w: World) -> Case:
    def write(folder):
        folder.mkdir()
        for i in range(3):
            _bomb_png(folder / f"s{i}.png")
    argv, outs = _own(w, "bomb", "path: images", {"images": write})
    return Case(argv, ["s0.png", "20000 x 20000", "decompression bomb"], outs)


# --- the digits' CSV files, damaged -------------------------------------------------------------------------


def _csv(w: World, name: str, mutate) -> tuple[list, list]:
    folder = w.copy(w.csv, name)
    path = folder / "mfeat-fou.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(mutate(lines)) + "\n")
    return _train(w, "--set", f"data.csv_dir={folder}")


def _cell(row: int, column: int, value: str):
    def mutate(lines):
        cells = lines[row].split(",")
        cells[column] = value
        lines[row] = ",".join(cells)
        return lines
    return mutate


@CASES
def a_csv_cut_short(w: World) -> Case:
    argv, outs = _csv(w, "short", lambda lines: lines[:1500])
    return Case(argv, ["mfeat-fou.csv", "has shape (1499, 77), expected (2000, 77)"], outs)


@CASES
def a_csv_with_a_ragged_row(w: World) -> Case:
    argv, outs = _csv(w, "ragged", _cell(9, 5, "1,2"))
    return Case(argv, ["mfeat-fou.csv", "is not a numeric CSV"], outs)


@CASES
def a_csv_with_text_in_a_cell(w: World) -> Case:
    argv, outs = _csv(w, "text", _cell(9, 5, "abc"))
    return Case(argv, ["mfeat-fou.csv", "is not a numeric CSV"], outs)


@CASES
def a_view_whose_csv_is_missing(w: World) -> Case:
    argv, outs = _train(w, "--set", "data.views=[fou, kar]")
    return Case(argv, ["mfeat-kar.csv does not exist"], outs)


# --- resume: checkpoints whose contents lie ----------------------------------------------------------------


def _edited_run(w: World, name: str, edit) -> "object":
    from mckd.checkpoint import load_checkpoint, save_checkpoint

    run = w.copy(w.digits_run, name)
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    edit(tensors, metadata)
    save_checkpoint(run / "checkpoint.safetensors", tensors, metadata)
    return run


@CASES
def resume_a_checkpoint_at_a_negative_iteration(w: World) -> Case:
    run = _edited_run(w, "negative", lambda t, m: m.update(iteration=-5, complete=False))
    return Case(["train", "--resume", run], ["iteration '-5'", "whole number >= 0"], [run])


@CASES
def resume_a_checkpoint_past_the_end_of_the_run(w: World) -> Case:
    run = _edited_run(w, "past_the_end", lambda t, m: m.update(iteration=50, complete=False))
    return Case(["train", "--resume", run], ["at iteration 50, past the end of this run (3 iterations)"], [run])


@CASES
def resume_a_checkpoint_with_world_size_zero(w: World) -> Case:
    run = _edited_run(w, "world_zero", lambda t, m: m.update(world_size=0))
    return Case(["train", "--resume", run], ["world_size '0'", ">= 1"], [run])


@CASES
def resume_a_checkpoint_whose_optimiser_state_is_nan(w: World) -> Case:
    import torch

    def poison(tensors, metadata):
        name = next(k for k in tensors if k.startswith("optimizers.") and tensors[k].is_floating_point()
                    and tensors[k].numel() > 1)
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    run = _edited_run(w, "nan_state", poison)
    return Case(["train", "--resume", run], ["holds NaN or infinite values", "optimizers."], [run])


@CASES
def resume_a_pickle_named_checkpoint(w: World) -> Case:
    run = w.copy(w.digits_run, "pickle")
    (run / "checkpoint.safetensors").write_bytes(pickled_payload(w.marker))
    return Case(["train", "--resume", run], ["Python pickle", "refuses"], [run])


@CASES
def resume_a_folder_that_is_not_a_run(w: World) -> Case:
    return Case(["train", "--resume", w.csv], ["cannot resume", "no config.yaml"], [w.csv])


@CASES
def resume_with_another_model_configuration_keeps_the_runs_config(w: World) -> Case:
    run = w.copy(w.digits_run, "other_model")
    return Case(["train", "--resume", run, "--set", "model.hidden=8"],
                ["other_model/checkpoint.safetensors", "does not match this model configuration", "(16, 76) vs (8, 76)"],
                [run / "config.yaml", run / "data.json", run / "checkpoint.safetensors", run / "metrics.jsonl"])


@CASES
def resume_a_run_without_a_checkpoint(w: World) -> Case:
    run = w.copy(w.digits_run, "no_checkpoint")
    (run / "checkpoint.safetensors").unlink()
    return Case(["train", "--resume", run], ["cannot resume", "checkpoint.safetensors", "does not exist"], [run])


@CASES
def resume_a_damaged_training_state(w: World) -> Case:
    def damage(tensors, metadata):
        metadata.update(iteration=1, complete=False)
        del metadata["world_size"], tensors["data.train"]
    run = _edited_run(w, "damaged_state", damage)
    return Case(["train", "--resume", run], ["lacks ['world_size', 'data.train']", "cannot be resumed"], [run])


@CASES
def force_keeps_the_old_run_when_the_new_one_diverges(w: World) -> Case:
    run = w.copy(w.digits_run, "diverging")
    return Case(["train", w.digits_yaml, "--out", run, "--force", "--set", "train.lr=1e30"],
                ["training diverged", "nothing was kept"], [run])


@pytest.mark.parametrize("build", CASES.params())
def test_train_refuses_bad_input_in_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
