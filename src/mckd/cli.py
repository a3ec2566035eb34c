"""The ``mckd`` command line."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from mckd.errors import Interrupted, MckdError, Stopped
from mckd.progress import plural

# A name that becomes part of a file name (--names of mckd compare): no folders, no hidden files.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*$")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=0.01 --set method.alpha=0 (repeatable)",
    )


def _default_out(config: str) -> Path:
    return Path("runs") / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _distinct(values: Sequence[Any], option: str) -> None:
    """``--seeds 0 0`` or ``--methods mckd mckd``: each value once."""
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise MckdError(f"{option}: {', '.join(repeated)} given more than once; each must appear once")


def cmd_train(args: argparse.Namespace) -> None:
    from mckd import distributed
    from mckd.config import load_raw
    from mckd.experiment import train_seeds

    if args.resume and (args.config or args.seeds):
        raise MckdError("--resume RUN_DIR continues one run with its own config.yaml: give no CONFIG and no --seeds")
    if args.resume and args.force:
        raise MckdError("--resume continues a run and --force replaces it: give one of them")
    if not args.resume and not args.config:
        raise MckdError("mckd train needs a CONFIG file, or --resume RUN_DIR")
    out = Path(args.resume) if args.resume else Path(args.out) if args.out else _default_out(args.config)
    if args.seeds:
        _distinct(args.seeds, "--seeds")
        rows = train_seeds(load_raw(args.config), args.overrides, args.seeds, out, force=args.force)
        if distributed.is_main():
            from mckd.report import markdown_table

            print(markdown_table(rows))
    else:
        from mckd.config import input_paths
        from mckd.train import claim_run_directory

        # A new run's config is checked before its directory is claimed; a resumed run's is read under the claim.
        config = _resumable(out) if args.resume else _config_of(args, out)
        # the run's own config.yaml, read whole already, is rewritten by the new run: it is not lost
        own = not args.resume and Path(args.config).resolve() == (out / "config.yaml").resolve()
        inputs = [*([] if own else [args.config]), *input_paths(config)] if config is not None else []
        with claim_run_directory(out, bool(args.resume), args.force, inputs=inputs):  # held through the evaluation
            _print_evaluation(_train_one(args, out, config or _config_of(args, out)))
    if distributed.is_main():
        print(f"run directory: {out}")


def _resumable(out: Path) -> None:
    """``--resume RUN``: RUN must be a run directory of mckd train (said before anything is claimed)."""
    from mckd.runs import RunDir

    if not RunDir(out).config.is_file():
        checkpoint = "" if RunDir(out).checkpoint.is_file() else " and no checkpoint"
        what = "does not exist" if not out.exists() else f"has no config.yaml{checkpoint}"
        raise MckdError(f"cannot resume {str(out)!r}: it {what} (not a run directory of mckd train)")
    return None


def _config_of(args: argparse.Namespace, out: Path) -> Any:
    """The config of ``mckd train``: CONFIG with --set, or the run's own config.yaml with --set (--resume)."""
    from mckd.config import ConfigError, apply_overrides, config_from_dict, load_raw
    from mckd.runs import RunDir

    if args.resume:
        saved = RunDir(out).config
        if not saved.is_file():
            checkpoint = "" if RunDir(out).checkpoint.is_file() else " and no checkpoint"
            raise MckdError(f"cannot resume {str(out)!r}: it has no config.yaml{checkpoint} (not a run directory of "
                            "mckd train)")
        raw = load_raw(saved)
    else:
        raw = load_raw(args.config)
    try:
        return config_from_dict(apply_overrides(raw, args.overrides))
    except ConfigError as error:
        if not args.resume:
            raise
        raise ConfigError(f"the config of run {str(out)!r} ({RunDir(out).config}) is not valid: {error}") from None


def _train_one(args: argparse.Namespace, out: Path, config: Any) -> Any:
    """``mckd train`` of one run (new or resumed), then its evaluation."""
    from mckd.experiment import train_and_evaluate

    return train_and_evaluate(config, out, resume=bool(args.resume), force=args.force)


def _print_evaluation(result, samples: str = "test samples") -> None:
    from mckd import distributed
    from mckd.report import markdown_table

    if distributed.is_main():
        print(f"every subset (the {samples} that have it):")
        print(markdown_table(result.subsets))
        print(f"as observed (each of the {samples} with its own modalities), and per pattern:")
        print(markdown_table(result.observed))


def _segment_options(args: argparse.Namespace) -> "object":
    from mckd.seg.segment import SegmentOptions

    from mckd.bounds import check_bound

    for name in ("et_min_voxels", "min_component_voxels"):
        value = getattr(args, name, None)
        if value is not None:
            check_bound("voxel_threshold", value, f"--{name.replace('_', '-')}")
    return SegmentOptions(tta=args.tta, et_min_voxels=args.et_min_voxels, min_component_voxels=args.min_component_voxels,
                          largest_component=args.largest_component,
                          probabilities=getattr(args, "probabilities", False))


def _add_segment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true", help="test-time mirroring: average over the 8 flips of the 3 axes")
    p.add_argument("--et-min-voxels", type=int, default=None, metavar="N",
                   help="relabel a predicted ET under N voxels (of the input's grid) as core; default: the run's "
                        "task.et_min_voxels; 0: off")
    p.add_argument("--min-component-voxels", type=int, default=0, metavar="N",
                   help="remove predicted components (26-connected foreground) under N voxels (default 0: off)")
    p.add_argument("--largest-component", action="store_true", help="keep only the largest predicted component")


def _split_names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mckd.io import claim_output

    run = Path(args.run_dir)
    if not run.is_dir() and not run.parent.is_dir():  # nothing to claim there (and no folder made for a lock)
        raise MckdError(f"run directory {str(run)!r} does not exist")
    if args.data is None:
        given = [flag for flag, value, default in (("--subsets", args.subsets, "all"), ("--out", args.out, None))
                 if value != default]
        if given:  # they shape an evaluation of other labelled data; without --data they would be ignored
            raise MckdError(f"{given[0]} applies with --data DIR (other labelled data); mckd evaluate RUN alone "
                            "evaluates every subset of the run's test split into RUN/eval")
    out = Path(args.out) if args.data is not None and args.out else None
    outside = out is not None and not out.resolve().is_relative_to(run.resolve())
    # The run is claimed (not while it trains), or, for --data --out elsewhere, that output: a read-only run evaluates.
    target, what = (out, "evaluation folder") if outside else (run, "run directory")
    from mckd.data.recorded_split import accept_changed_data

    with claim_output(target, replace=True, kind="dir", what=what), accept_changed_data(args.accept_changed_data):
        if not run.is_dir():
            raise MckdError(f"run directory {str(run)!r} does not exist")
        _evaluate(args)


def _evaluate(args: argparse.Namespace) -> None:
    from mckd.experiment import aggregate_run_seeds, run_seeds
    from mckd.report import markdown_table
    from mckd.runs import RunDir, evaluate_run

    run = RunDir(args.run_dir)
    if args.data is None and run.path.is_dir() and not run.checkpoint.exists():  # multi-seed: each seed, the mean
        seeds = run_seeds(run)
        for seed in seeds:
            evaluate_run(run.seed(seed).path, args.device)
        print(markdown_table(aggregate_run_seeds(run, seeds)))
        print(f"written: seed_<s>/eval/ for seeds {seeds}, {run.aggregate.with_suffix('.md')}, "
              f"{run.aggregate_observed.with_suffix('.md')}")
        return
    if args.data is None:
        _print_evaluation(evaluate_run(run.path, args.device))
        print(f"written: {run.subsets.with_suffix('.md')}, {run.observed.with_suffix('.md')}, "
              f"{run.patterns.with_suffix('.md')}")
        return
    subsets = args.subsets
    if subsets not in ("all", "observed"):
        subsets = [s.split("+") for s in subsets.split(",")]
        for subset in subsets:
            if not all(name.strip() for name in subset):
                raise MckdError(f"--subsets {args.subsets!r}: expected all, observed, or subsets of sequence names "
                                "joined by + and separated by commas, e.g. flair+t1ce,t1ce")
            _distinct(subset, f"--subsets ({'+'.join(subset)})")
        _distinct(["+".join(sorted(s)) for s in subsets], "--subsets")
    out = Path(args.out) if args.out else run.data_eval_dir(args.data)
    result = evaluate_run(run.path, args.device, data=args.data, data_format=args.format, labels=args.labels,
                          subsets=subsets, options=_segment_options(args), channels=_split_names(args.channels),
                          out=out, progress=not args.no_progress)
    _print_evaluation(result, "cases")
    from mckd import distributed

    if distributed.is_main():
        print(f"written: {out}/subsets.md, observed.md, table.md" + (", cases.md" if (out / "cases.csv").exists() else "")
              + ", evaluation.json")


def cmd_compare(args: argparse.Namespace) -> None:
    from mckd.experiment import test_sentence
    from mckd.io import claim_output
    from mckd.report import compare_tables, plot_subset_comparison, read_table, row_key, write_table
    from mckd.runs import RunDir, primary_metric

    a, b = Path(args.run_a), Path(args.run_b)
    for name in args.names or ():
        if not PLAIN_NAME.match(name):
            raise MckdError(f"--names: {name!r} is not a plain name (letters, digits, _ - + .; no '/', no leading "
                            "dot): it becomes part of file names")
    table_a, table_b = RunDir(a).results_table(args.table), RunDir(b).results_table(args.table)
    if table_a.resolve() == table_b.resolve():
        raise MckdError(f"{str(a)!r} and {str(b)!r} are the same run ({table_a}); compare two different runs")
    if args.names and args.names[0] == args.names[1]:
        raise MckdError(f"--names: give the two runs different names (both are {args.names[0]!r})")
    name_a, name_b = args.names or (a.resolve().name, b.resolve().name)
    if name_a == name_b and a.resolve().parent.name != b.resolve().parent.name:  # mckd/seed_0 vs smil/seed_0
        name_a, name_b = (f"{p.resolve().parent.name}_{p.resolve().name}" for p in (a, b))
    if name_a == name_b:
        name_a, name_b = f"{name_a}_a", f"{name_b}_b"
    rows_a, rows_b = read_table(table_a), read_table(table_b)
    metrics = [k for k in rows_a[0] if k not in ("subset", "pattern", "size", "samples")]
    metric = args.metric or primary_metric(RunDir(a)) or metrics[0]
    if metric not in metrics:
        raise MckdError(f"metric {metric!r} is not in the tables; they have {metrics}")
    different = _different_test_splits(a, b)
    if different:
        print(f"mckd: warning: {different}; the comparison pairs rows by name, not the same samples",
              file=sys.stderr)
    rows, summary = compare_tables(rows_a, rows_b, metric, name_a, name_b)
    out = Path(args.out) if args.out else a / f"compare_vs_{name_b}"
    sentence = test_sentence(summary, name_a, name_b)
    _check_comparison_folder(out)
    with claim_output(out, replace=True, kind="dir", what="comparison folder"):
        title = f"{metric} per {row_key(rows)}: {name_a} vs {name_b}"
        write_table(rows, out / "comparison", title=title, notes=sentence)
        plot_subset_comparison(rows, name_a, name_b, metric, out / "comparison.png")
    print(sentence)
    print(f"written: {out / 'comparison.md'}, {out / 'comparison.png'}")


COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.png")


def _check_comparison_folder(out: Path) -> None:
    """``mckd compare`` writes COMPARISON_FILES into ``out``, replacing an earlier comparison's: a folder that holds
    anything else, or a comparison.md mckd did not write, is someone else's and refused."""
    if not out.is_dir():
        return
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in COMPARISON_FILES)
    report, table = out / "comparison.md", out / "comparison.csv"
    present = [out / name for name in COMPARISON_FILES if (out / name).exists() or (out / name).is_symlink()]
    from mckd.io import file_problem

    for path in present:
        problem = file_problem(path) if path.exists() and not path.is_dir() else ""
        if problem:  # a named pipe, a device: say what it is
            raise MckdError(f"--out {str(out)!r}: {path.name} {problem}; mckd writes only regular files: choose "
                            "another folder")
    ours = (report.is_file() and not report.is_symlink() and report.read_text(errors="replace").startswith("# ")
            and (not table.exists() or (table.is_file() and not table.is_symlink()
                                        and table.read_text(errors="replace").startswith(("subset,", "pattern,")))))
    foreign = bool(present) and not ours  # an earlier comparison has mckd's report (and table) beside its plot
    if others or foreign:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "") or \
            ", ".join(p.name for p in present)
        raise MckdError(f"--out {str(out)!r} holds files mckd compare did not write ({shown}); it writes "
                        f"{', '.join(COMPARISON_FILES)} only into a new folder or an earlier comparison's: choose "
                        "another folder")


def _different_test_splits(a: Path, b: Path) -> str:
    """Why runs (or multi-seed folders) ``a`` and ``b`` were tested on different samples; "" when the same or unknown.

    Each run's ``data.json`` records its split (a multi-seed folder: its first seed's); runs of older mckd
    versions recorded none, and nothing is said of them.
    """
    from mckd.data.recorded_split import read_recorded_split

    def test_ids(folder: Path) -> list[str] | None:
        candidates = [folder / "data.json", *sorted(folder.glob("seed_*/data.json"))]
        for candidate in candidates:
            if candidate.is_file():
                try:
                    recorded = read_recorded_split(candidate)
                except MckdError:
                    return None
                return list(recorded.ids.get("test", [])) if recorded is not None else None
        return None

    ids_a, ids_b = test_ids(a), test_ids(b)
    if ids_a is None or ids_b is None or sorted(ids_a) == sorted(ids_b):
        return ""
    shared = len(set(ids_a) & set(ids_b))
    return (f"the runs were tested on different samples ({len(ids_a)} and {len(ids_b)} test ids, {shared} in "
            "common: different data or data.split_seed)")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from mckd.experiment import benchmark

    _distinct(args.methods, "--methods")
    _distinct(args.seeds, "--seeds")
    out = Path(args.out) if args.out else _default_out(args.config)
    benchmark(args.config, args.methods, args.seeds, out, args.overrides, reuse=args.reuse, force=args.force)
    print((out / "summary.md").read_text())
    print(f"written: {out}")


def cmd_analyse(args: argparse.Namespace) -> None:
    from mckd.analyses import analyse
    from mckd.report import markdown_table

    _distinct(args.seeds, "--seeds")
    if args.values:
        _distinct(args.values, "--values")
    out = Path(args.out) if args.out else Path("runs") / f"analyse_{args.kind}_{Path(args.config).stem}"
    rows = analyse(args.kind, args.config, out, args.seeds, args.overrides, args.values, force=args.force)
    print(markdown_table(rows))
    print(f"written: {out / args.kind}.md, {out / args.kind}.csv, {out / args.kind}.png")


def cmd_predict(args: argparse.Namespace) -> None:
    from mckd.predict_table import is_classification_run

    if args.data or is_classification_run(args.checkpoint):  # a classification run scores samples into a CSV
        _predict_samples(args)
        return
    from mckd.seg.predict import predict_files, predict_folder

    if args.force and args.resume:
        raise MckdError("--force overwrites the outputs that exist and --continue keeps them: give one of them")
    if args.input or args.output:
        if args.inputs or args.out or args.mask:
            raise MckdError("give either --input DIR --output DIR (a folder of cases) or MODALITY=FILE ... --out FILE "
                            "(one case), not both")
        if not (args.input and args.output):
            raise MckdError("--input DIR needs --output DIR (and the other way round)")
        if Path(args.output).suffix.lower() in (".csv", ".tsv", ".json", ".nii", ".gz", ".npy", ".png"):
            raise MckdError(f"--output {args.output!r} looks like a file, but a segmentation run writes a folder of "
                            "cases there: give a folder (one case: MODALITY=FILE ... --out FILE.nii.gz)")
        predict_folder(args.checkpoint, args.input, args.output, data_format=args.format,
                       channels=_split_names(args.channels), sequences=_split_names(args.sequences),
                       labels=args.labels, options=_segment_options(args), device=args.device,
                       force=args.force, resume=args.resume, progress=not args.no_progress)
        return
    if not args.inputs or not args.out:
        raise MckdError("give --input DIR --output DIR (a folder of cases), or MODALITY=FILE ... --out FILE (one case)")
    if getattr(args, "probabilities", False):
        raise MckdError("--probabilities is written by folder prediction (--input DIR --output DIR); one case "
                        "(--out FILE) writes the labels only")
    inputs = {}
    for item in args.inputs:
        if "=" not in item:
            raise MckdError(f"inputs are MODALITY=FILE (e.g. flair=case_flair.nii.gz), got {item!r}")
        name, path = item.split("=", 1)
        from mckd.io import check_path

        check_path(path, f"input {name}")
        if name in inputs:
            raise MckdError(f"sequence {name!r} is given twice")
        inputs[name] = path
    from mckd.io import claim_output, file_problem

    for name, path in [*inputs.items(), *([("mask", args.mask)] if args.mask else [])]:
        problem = file_problem(path)
        if problem:  # before the output is claimed: a wrong argument is not a busy output
            raise MckdError(f"{path} ({name}) {problem}")
    with claim_output(args.out, replace=args.force, kind="file", what="output"):
        out = predict_files(args.checkpoint, inputs, args.out, device=args.device, mask=args.mask,
                            convention=args.labels, force=args.force, options=_segment_options(args))
    print(f"written: {out}")


def _predict_samples(args: argparse.Namespace) -> None:
    from mckd.predict_table import predict_samples

    if not args.data or not args.output or args.input or args.inputs or args.out:
        raise MckdError(f"{args.checkpoint} is a classification model: it scores samples, mckd predict RUN --data "
                        "CONFIG.yaml (or MODALITY=FILE ...) --output FILE.csv; segmenting cases needs a segmentation run")
    defaults = build_parser().parse_args(["predict", "RUN"])  # what the segmentation options are when not given
    given = [name for name in ("sequences", "format", "labels", "channels", "mask", "resume", "tta", "et_min_voxels",
                               "min_component_voxels", "largest_component", "probabilities")
             if hasattr(args, name) and getattr(args, name) != getattr(defaults, name, None)]
    if given:
        flag = {"resume": "continue"}.get(given[0], given[0]).replace("_", "-")
        raise MckdError(f"--{flag} is an option of segmentation prediction; {args.checkpoint} is a classification "
                        "run, which predicts every sample from the modalities it has (leave a modality out of "
                        "--data to predict without it)")
    out, count = predict_samples(args.checkpoint, args.data, args.output, device=args.device, force=args.force)
    print(f"written: {out} ({plural(count, 'sample')})")


def cmd_plot_seg(args: argparse.Namespace) -> None:
    from mckd.seg.plot import plot_case

    from mckd.io import claim_output

    subset = args.subset.split("+")
    _distinct(subset, "--subset")
    figures = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff")
    if not args.out.lower().endswith(figures):
        raise MckdError(f"--out {args.out!r}: a figure's file name must end in {', '.join(figures)}")
    with claim_output(args.out, replace=True, kind="file", what="figure"):
        out = plot_case(args.run_dir, args.case, subset, args.out, args.slice, args.device)
    print(f"written: {out}")


def cmd_list(args: argparse.Namespace) -> None:
    from mckd import catalog
    from mckd.seg.formats import format_descriptions
    from mckd.seg.labels import CONVENTIONS

    known = catalog.builtin_catalog() if not args.config else None  # answers without importing torch
    if known is None:  # a config's imports, a plug-in, or sources changed since the catalog was made
        from mckd import components

        if args.config:
            from mckd.config import load_raw

            components.import_modules(load_raw(args.config).get("imports") or [], f"{args.config}: imports")
    print("\n".join(catalog.listing(known.data if known is not None else catalog.snapshot(builtin_only=False))))
    print("segmentation formats (mckd prepare seg --format, mckd predict --format; auto recognises them):")
    for name, description in format_descriptions():
        print(f"  {name:22s} {description}")
    print("label conventions (--labels; also: dataset = the dataset.json's own, or a YAML label file):")
    for name, scheme in sorted(CONVENTIONS.items()):
        print(f"  {name:22s} {scheme.description}")
        print(f"  {'':22s} values: {scheme.describe()}")


# Modules that add a ``mckd prepare <dataset>`` command: each defines
# ``add_prepare_parser(subparsers)`` and sets ``func`` on its parser (``prepare seg`` is below).
PREPARE_MODULES: list[str] = ["mckd.data.avmnist"]


def _add_prepare_seg_parsers(datasets: Any) -> None:
    """``mckd prepare seg SRC [SRC ...] OUT`` (and ``mckd prepare brats``, the same): the cache training reads."""
    for name, help_text in (("seg", "cache a segmentation dataset in any format (nnU-Net v2, MSD, BraTS, a layout "
                                    "file), or several into one cache"),
                            ("brats", "the same as `prepare seg` (its name in mckd 0.1)")):
        p = datasets.add_parser(
            name, help=help_text,
            description="Detect the format of each SRC (nnU-Net v2 raw, Medical Segmentation Decathlon, BraTS "
                        "2017-2024 case folders, or a YAML layout) and say what was found; read every case, check "
                        "it, put it on one grid (orientation and spacing, MONAI), crop it to the brain's bounding "
                        "box, z-score each sequence inside the brain and write memory-mappable arrays plus what is "
                        "needed to put predictions back on the original grid. Several SRC go into one cache: its "
                        "sequences are all of theirs, and a case lacks those its dataset does not have "
                        "(--allow-missing). Training and evaluation read only this cache.",
        )
        p.add_argument("paths", nargs="+", metavar="SRC ... OUT",
                       help="the dataset's folder (or several), then the cache folder to write")
        p.add_argument("--format", "--layout", dest="format", action="append", metavar="FORMAT",
                       help="auto (default: recognise it), nnunet, msd, brats2018 (2017-2021 names), brats2023 "
                            "(2023-2024 names), or a YAML layout file (e.g. configs/brats2013_layout.yaml); once for "
                            "every SRC, or once per SRC in order (--format auto --format FILE.yaml)")
        p.add_argument("--labels", default="auto",
                       help="auto (default: the dataset's own description; for BraTS layouts the convention the label "
                            "values found make certain), dataset, a convention (brats2018, brats2023, brats2024, "
                            "brats2013, msd_brats: see mckd list) or a YAML label file (nnU-Net notation)")
        p.add_argument("--spacing", nargs="+", default=["auto"], metavar="MM",
                       help="target voxel size: auto (default: the median over the cases) or three sizes in mm")
        p.add_argument("--orientation", default="RAS", help="target axis codes (default RAS), or none to keep each file's")
        p.add_argument("--channels", help="sequence names in channel order, for a folder without a dataset.json")
        p.add_argument("--workers", type=_workers, default=min(4, os.cpu_count() or 1),
                       help="parallel processes (default: up to 4)")
        p.add_argument("--allow-missing", action="store_true",
                       help="treat absent or empty (all one value) sequences as missing instead of failing")
        p.add_argument("--force", action="store_true", help="replace an existing cache at OUT")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=cmd_prepare_seg)


def _workers(text: str) -> int:
    """``--workers``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def cmd_prepare_seg(args: argparse.Namespace) -> None:
    from mckd.seg.prepare import prepare_segmentation

    if len(args.paths) < 2:
        raise MckdError(f"mckd prepare {args.dataset} needs SRC and OUT (the dataset's folder, then the cache to "
                        f"write), got {' '.join(args.paths)}")
    *sources, out = args.paths
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    record = prepare_segmentation(sources, out, args.format or ["auto"], args.labels, args.spacing, args.orientation,
                                  workers=args.workers, force=args.force, allow_missing=args.allow_missing,
                                  progress=not args.no_progress, channels=channels)
    kinds = ", ".join(dict.fromkeys(s["format"]["kind"] for s in record["sources"])) if record.get("sources") \
        else record["source_format"]["kind"]
    print(f"prepared {plural(len(record['cases']), 'case')} ({kinds}, {', '.join(record['modalities'])}) into {out}")


# Arguments that name files or folders (or a name that may be a file: --labels, --format): every one goes through
# the one path validator (mckd.io.path_problem) as it is parsed, whichever command defines it.
PATH_ARGUMENTS = {"config", "out", "resume", "run_dir", "data", "run_a", "run_b", "checkpoint", "input", "output",
                  "mask", "source", "images", "labels", "recordings", "format", "paths"}


def _path_argument(text: str) -> str:
    from mckd.io import path_problem, shown

    problem = path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{shown(text)!r} {problem}")
    return text


def _check_path_arguments(parser: argparse.ArgumentParser) -> None:
    """Give every path argument of ``parser`` and its subcommands the path validator as its type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _check_path_arguments(sub)
        elif action.dest in PATH_ARGUMENTS and action.type is None:
            action.type = _path_argument


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong argument reported as every other error: one ``mckd: error:`` line, exit 2."""

    def error(self, message: str) -> Any:
        where = f"{self.prog}: " if self.prog != "mckd" else ""
        self.exit(2, f"mckd: error: {where}{' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Unknown options are named with the command they were given to (``mckd predict: unrecognized ...``)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            words = [self.prog, getattr(parsed, "command", None), getattr(parsed, "dataset", None)]
            command = " ".join(w for w in words if w)
            self.exit(2, f"mckd: error: {command}: unrecognized arguments: {' '.join(extra)} (see {command} --help)\n")
        return parsed


def build_parser(prepare: bool = True) -> argparse.ArgumentParser:
    """The parser of every command; ``prepare=False`` leaves out ``mckd prepare``'s datasets (their modules import
    torch), so that ``mckd --help`` and every other command's parsing answer before torch loads."""
    parser = _Parser(
        prog="mckd",
        description="Multi-modal learning that stays accurate when modalities are missing (MCKD).",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print mckd's version, git commit, Python and torch versions, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a config (one seed, or several with --seeds) and evaluate it",
                            description="Train one run and evaluate it over every subset of modalities.")
    p.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    _add_set(p)
    p.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    p.add_argument("--seeds", type=int, nargs="+", help="train once per seed into OUT/seed_<s> and aggregate")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from RUN_DIR/checkpoint.safetensors, exactly where it stopped")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run in OUT (the old one stays until the new one has written its "
                        "first checkpoint)")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="evaluate a trained run over every subset of modalities",
                            description="Write RUN_DIR/eval/: every subset, as observed, per missingness pattern. "
                                        "For a multi-seed directory (mckd train --seeds), each seed and their mean. "
                                        "With --data (segmentation): score other labelled cases, a cache or a dataset "
                                        "folder in any format, each case on its own grid, into RUN_DIR/eval_<DATA>/.")
    p.add_argument("run_dir")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--data", metavar="CACHE_OR_DIR",
                   help="labelled cases to score: a `mckd prepare seg` cache, or a folder in any format of mckd list")
    p.add_argument("--format", default="auto", help="with --data DIR: its format (default: recognise it)")
    p.add_argument("--labels", default="auto", help="with --data DIR: what its label values mean (as prepare seg)")
    p.add_argument("--channels", help="with --data DIR: sequence names in channel order, where no dataset.json says")
    p.add_argument("--subsets", default="all",
                   help="with --data DIR: all (every subset of the sequences each case has; default), observed "
                        "(each case from what it has), or subsets like flair+t1ce,t1ce")
    p.add_argument("--out", help="with --data: output folder (default: RUN_DIR/eval_<DATA>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="the run's data changed since training (samples gone or relabelled): evaluate the test ids "
                        "its data.json recorded that remain, with their current labels, and say so (default: refuse; "
                        "the split is never re-drawn)")
    _add_segment_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("compare", help="compare two runs subset by subset with a paired t-test",
                            description="Per-subset difference RUN_A - RUN_B, means, and a one-tailed paired "
                                        "t-test across subsets (RUN_A > RUN_B). A run is a run directory or a "
                                        "multi-seed directory.")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), help="labels for the two runs")
    p.add_argument("--metric", help="metric column to compare (default: RUN_A's task.primary_metric, e.g. "
                                    "balanced_accuracy or dice_mean; the first metric column where it has none)")
    p.add_argument("--table", choices=["subsets", "observed"], default="subsets",
                   help="subsets: every subset of modalities (default); observed: as observed, per missingness pattern")
    p.add_argument("--out", help="output folder (default: RUN_A/compare_vs_<NAME_B>)")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser("benchmark", help="train and compare methods over seeds (the main job)",
                            description="Train each method over each seed, evaluate every subset, compare each "
                                        "method with the first, and write tables, plots and summary.md.")
    p.add_argument("config")
    p.add_argument("--methods", nargs="+", default=["mckd", "baseline"],
                   help="training methods or presets (see mckd list); the first is the reference")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--out", help="output folder (default: runs/<config>-<time>)")
    p.add_argument("--reuse", action="store_true",
                   help="keep runs in OUT already trained and evaluated with the same resolved config")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (each run once its successor "
                                                        "has written its first checkpoint)")
    _add_set(p)
    p.set_defaults(func=cmd_benchmark)

    p = commands.add_parser("analyse", help="the paper's analyses: alpha sweep, weight normalisation, feature quality",
                            description="alpha: method.alpha swept with L1 and L2 distillation (Fig. 3a); norm: "
                                        "softmax, sigmoid and ReLU importance weights (Table 3); features: L1 "
                                        "distance and cosine similarity between the Eq. 2 feature and the real "
                                        "feature of a removed modality over training, MCKD vs no distillation "
                                        "(Fig. 5). Each writes OUT/KIND.{md,csv,png}.")
    p.add_argument("kind", choices=["alpha", "norm", "features"])
    p.add_argument("config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--values", nargs="+", help="what to sweep: alphas (default 0 0.01 0.1 0.3 1), "
                                               "normalisations, or methods for features (default mckd baseline)")
    p.add_argument("--out", help="output folder (default: runs/analyse_<kind>_<config>)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    _add_set(p)
    p.set_defaults(func=cmd_analyse)

    if PREPARE_MODULES:
        import importlib

        p = commands.add_parser("prepare", help="prepare a dataset from its raw files, once",
                                description="Read raw files and write a prepared dataset that training reads.")
        datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
        _add_prepare_seg_parsers(datasets)
        for module in PREPARE_MODULES if prepare else ():
            importlib.import_module(module).add_prepare_parser(datasets)

    p = commands.add_parser("predict", help="score new samples (classification), or segment a folder of cases "
                                            "(any format) or one case, with a trained run",
                            description="A classification run: score the samples of --data (a config whose data "
                                        "section names the files, or MODALITY=FILE items read like the run's own "
                                        "sources), each from the modalities it has, into --output FILE.csv (id, "
                                        "modalities, predicted class, one probability per class). A segmentation "
                                        "run: segment every case of --input DIR (nnU-Net v2, MSD, BraTS case "
                                        "folders or a layout file) from the sequences it has, each output on its "
                                        "input's grid, named as the format names predictions ({case}.nii.gz; "
                                        "nnU-Net: its file_ending), with predict.json recording the options and "
                                        "cases; or one case from MODALITY=FILE inputs into --out FILE. Sequences "
                                        "the model does not take are not used, in both forms (a line says which). A "
                                        "prediction never replaces a file an input case reads (image, label, mask), "
                                        "even with --force. Under torchrun the cases are shared out between the "
                                        "processes.")
    p.add_argument("checkpoint", help="run directory or checkpoint.safetensors")
    p.add_argument("inputs", nargs="*", metavar="MODALITY=FILE",
                   help="one case: e.g. flair=BraTS_flair.nii.gz t1ce=BraTS_t1ce.nii.gz (with --out)")
    p.add_argument("--input", metavar="DIR", help="a folder of cases to segment (any format of mckd list)")
    p.add_argument("--output", metavar="DIR", help="the folder to write the predictions and predict.json into "
                                                    "(classification: the .csv file)")
    p.add_argument("--data", nargs="+", metavar="CONFIG_OR_FILES",
                   help="classification: the new samples, a config file (its data section) or MODALITY=FILE items")
    p.add_argument("--format", default="auto",
                   help="the input's format: auto (default), nnunet, msd, brats2018, brats2023, or a YAML layout")
    p.add_argument("--channels", help="sequence names in channel order, for images without a dataset.json "
                                      "(default: the run's)")
    p.add_argument("--sequences", help="use only these of the model's sequences, e.g. flair,t1ce (default: all each "
                                       "case has that the model takes)")
    p.add_argument("--labels", default="auto",
                   help="output label values: auto (the input's declared labels when they fit the run, else the "
                        "run's; one case: brats2018 for runs on a BraTS convention, else the run's), run, a "
                        "convention (brats2018, brats2023, msd_brats, ...) or a label file")
    p.add_argument("--probabilities", action="store_true",
                   help="also write the probabilities (4D NIfTI, one channel per region or class)")
    _add_segment_options(p)
    p.add_argument("--out", help="one case: the output .nii.gz")
    p.add_argument("--mask", help="one case: brain mask NIfTI (default: voxels that differ from the background)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing outputs (never a file an input case reads: refused, naming it)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="keep the outputs that exist and predict the other cases")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-case lines")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("plot-seg", help="axial slice of each sequence with ground truth and prediction",
                            description="Segment one cached case with a subset of sequences and draw every sequence "
                                        "with the ground truth (top) and the prediction (bottom) overlaid.")
    p.add_argument("run_dir")
    p.add_argument("--case", required=True, help="case id in the run's cache")
    p.add_argument("--subset", required=True, help="sequences present, joined by + (e.g. flair+t1ce)")
    p.add_argument("--slice", type=int, help="axial slice on the cached grid (default: the one with most tumour)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_plot_seg)

    p = commands.add_parser("list", help="list the datasets, networks and methods a config can name")
    p.add_argument("--config", default=None,
                   help="also list what this config's imports: register (methods, fusions, ... from outside mckd)")
    p.set_defaults(func=cmd_list)
    _check_path_arguments(parser)
    return parser


class _VersionAction(argparse.Action):
    """``mckd --version``: computed when asked (it reads the git commit)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        from mckd.provenance import version_line

        print(version_line())
        parser.exit()


def _raise_interrupted(signum: int, frame: Any) -> None:
    from mckd.distributed import leave_closed_terminal

    leave_closed_terminal(signum)
    raise Interrupted(signal.Signals(signum).name)


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP unwind like Ctrl-C; returns the handlers they had (none outside the main thread)."""
    if not _in_main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGTERM, signal.SIGHUP)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _format_warning(message: Any, category: type, filename: str, lineno: int, line: Any = None) -> str:
    """Warnings as one line, ``mckd: warning: ...``, without the file and source line Python adds."""
    return f"mckd: warning: {' '.join(str(message).split())}\n"


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the machine's memory running out (Python's, torch's CPU allocator, CUDA)."""
    text = str(error)
    return isinstance(error, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text


def _error_line(error: BaseException) -> str:
    """An error as one line, every huge value in it cut to 80 characters (a message names a value, it does not dump it)."""
    from mckd.io import shown

    return " ".join(shown(word) if len(word) > 200 else word for word in str(error).split())


# Commands that run without torch (where they can: ``list`` with a plug-in or a config's imports loads the components).
TORCH_FREE_COMMANDS = frozenset({"list"})


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM and SIGHUP outside the training loop (start-up, set-up, evaluation, prepare, predict) unwind like
    # Ctrl-C: temporary files and staging folders are removed on the way out and one line says what happened.
    previous = _stop_on_signals()
    try:
        from mckd.provenance import set_command

        arguments = sys.argv[1:] if argv is None else [str(a) for a in argv]
        set_command(arguments)
        parser = build_parser(prepare="prepare" in arguments)
        args = parser.parse_args(argv)
    except (KeyboardInterrupt, Interrupted) as stopped:
        _restore_signals(previous)
        print(f"mckd: {getattr(stopped, 'signal_name', 'SIGINT')} stopped mckd as it started; nothing was written",
              file=sys.stderr)
        return 130
    except BaseException:
        _restore_signals(previous)
        raise
    try:
        format_warning, warnings.formatwarning = warnings.formatwarning, _format_warning
        try:
            _check_config_first(args)  # before torch loads: a typo in a config answers at once
            if args.command not in TORCH_FREE_COMMANDS:
                from mckd.threads import apply_threads

                apply_threads()  # the auto thread count (a config's train.threads refines it)
            args.func(args)
        finally:
            warnings.formatwarning = format_warning
        if "torch" in sys.modules:  # a command that never loaded torch has no process group to leave
            from mckd import distributed

            distributed.shutdown()  # under torchrun: barrier, then leave the process group
    except Stopped as stopped:
        from mckd import distributed

        main_rank = distributed.is_main()
        distributed.shutdown()
        if main_rank:
            print(f"mckd: {stopped}", file=sys.stderr)
        return 130
    except MckdError as error:
        print(f"mckd: error: {_error_line(error)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        print(f"mckd: error: mckd {args.command} ran out of memory ({_error_line(error)[:160]}); ask for less: a "
              "smaller model, batch (train.batch_size, eval.batch_size) or crop, or fewer workers", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as stopped:
        name = getattr(stopped, "signal_name", "SIGINT")
        print(f"mckd: {name} stopped mckd {args.command}; files are written atomically, so nothing was "
              "half-written (what was being written was removed)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of a pipe went away (`mckd predict ... | head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        _restore_signals(previous)
    return 0


def _check_config_first(args: argparse.Namespace) -> None:
    """The CONFIG of train, benchmark and analyse, with its --set: read and checked as far as it can be without
    the components (and torch): the file, its YAML, the top-level keys, the fixed sections and (from the
    built-in components' catalog) the open sections' names, keys and types."""
    config = getattr(args, "config", None)
    if not config or args.command not in ("train", "benchmark", "analyse"):
        return
    from mckd.config import apply_overrides, check_fixed_sections, check_open_sections, load_raw
    from mckd.config_upgrade import upgrade_raw_config

    raw = upgrade_raw_config(apply_overrides(load_raw(config), args.overrides))
    check_fixed_sections(raw)
    if args.command == "benchmark" and isinstance(raw, dict):
        # each of --methods takes the method keys it has (mckd.experiment.method_config): checked per method later
        raw = {key: value for key, value in raw.items() if key != "method"}
    check_open_sections(raw)  # against the built-in components' catalog, when it can answer


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
