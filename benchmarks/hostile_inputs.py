"""The hostile classes of the malformed-input run (``benchmarks/malformed_inputs.py --only hostile``).

Beyond malformed files: full and read-only file systems (a small tmpfs or a
read-only bind mount in a private mount namespace, where one can be made),
two processes on one output, signals at every phase (set-up, training,
checkpointing, evaluation, ``prepare`` with workers, ``predict``), divergence,
and the one-line errors and misleading messages of the reliability issue.
Every case ends in one ``mckd: error:`` line (exit 2), or, stopped by a
signal, in one ``mckd: ...`` line (exit 130) after which the run resumes or
evaluates; no traceback, no temporary file, no orphaned process, no output
that mixes two runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import malformed_inputs as kit

PYTHON = sys.executable


def _mckd(root: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([PYTHON, "-m", "mckd.cli", *argv], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def _staging(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.glob(f".{name}.*.tmp") if p.is_dir()]


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _resumes(root: Path, run: Path, *more: str):
    """After a stop: the run resumes to the end and evaluates (or, stopped before its first checkpoint, is absent)."""
    def check() -> list[str]:
        leftovers = [p.name for p in run.parent.glob(f".{run.name}.*.tmp")]
        if leftovers:
            return [f"staging folders left: {leftovers}"]
        if not run.exists():
            return []
        done = _mckd(root, "train", "--resume", str(run), *more)
        if done.returncode != 0:
            return [f"mckd train --resume failed after the stop: {done.stderr.strip()[-300:]}"]
        return []
    return check


def _evaluates(root: Path, run: Path):
    def check() -> list[str]:
        done = _mckd(root, "evaluate", str(run), "--device", "cpu")
        return [] if done.returncode == 0 else [f"mckd evaluate failed after the stop: {done.stderr.strip()[-300:]}"]
    return check


def _consistent_run(run: Path, seed: int):
    """The run directory holds one run: config.yaml, the checkpoint and run.json agree on the seed."""
    def check() -> list[str]:
        from mckd.checkpoint import load_checkpoint

        if not (run / "checkpoint.safetensors").is_file():
            return [] if not run.exists() else [f"{run} exists without a checkpoint"]
        _, metadata = load_checkpoint(run / "checkpoint.safetensors")
        config_seed = int(next(line for line in (run / "config.yaml").read_text().splitlines()
                               if line.startswith("seed:")).split(":")[1])
        problems = []
        if metadata["config"]["seed"] != seed or config_seed != seed:
            problems.append(f"{run} mixes runs: checkpoint seed {metadata['config']['seed']}, config seed {config_seed}")
        return problems
    return check


def hostile_cases(root: Path, rng: np.random.Generator, good: Path, digits_run: Path, source: Path, cache: Path,
                  brats_run: Path, csv_dir: Path) -> list:
    Case = kit.Case
    cases = []
    flair = source / "case0" / "case0_flair.nii.gz"
    outs = iter(range(1000))
    out_dir = lambda: root / "runs" / f"hostile_absent_{next(outs)}"  # noqa: E731 - one output per case: cases run in parallel

    # ---- full and read-only file systems (subprocesses in a private mount namespace) ------------------------
    full = root / "full"
    full.mkdir()
    fill = f"mount -t tmpfs -o size=256k tmpfs {full} && (dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null; true)"
    with_run = f"mount -t tmpfs -o size=2m tmpfs {full} && cp -r {digits_run} {full}/run && " \
               f"(dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null; true)"
    nospace = "No space left on device"
    cases += [
        Case("full-disk/train", ["train", str(good), "--out", str(full / "run")], [nospace], shell=fill),
        Case("full-disk/evaluate", ["evaluate", str(full / "run"), "--device", "cpu"], [nospace], shell=with_run),
        Case("full-disk/resume", ["train", "--resume", str(full / "run"), "--set", "train.iterations=6"], [nospace],
             shell=with_run),
        Case("full-disk/compare", ["compare", str(digits_run), str(digits_run.parent / "other_digits"), "--out",
                                   str(full / "cmp")], [nospace], shell=fill),
        Case("full-disk/predict", ["predict", str(brats_run), f"flair={flair}", "--out", str(full / "seg.nii.gz"),
                                   "--device", "cpu"], [nospace], shell=fill),
        Case("full-disk/prepare-brats", ["prepare", "brats", str(source), str(full / "cache"), "--workers", "2",
                                         "--no-progress"], [nospace], shell=fill),
    ]
    run_copy = kit.copy_tree(digits_run, root / "ro" / "run")
    kit.run_ok(["train", str(good), "--out", str(digits_run.parent / "other_digits"), "--set", "seed=1"])
    ro = f"mount --bind -o ro {root / 'ro'} {root / 'ro'}"
    readonly = "Read-only file system"
    cases += [
        Case("read-only/compare-default-output", ["compare", str(run_copy), str(digits_run.parent / "other_digits")],
             [readonly], [root / "ro"], shell=ro),
        Case("read-only/evaluate", ["evaluate", str(run_copy), "--device", "cpu"], [readonly], [root / "ro"], shell=ro),
        Case("read-only/train-new", ["train", str(good), "--out", str(root / "ro" / "new")], [readonly], [root / "ro"],
             shell=ro),
        Case("read-only/train-force", ["train", str(good), "--out", str(run_copy), "--force"], [readonly],
             [root / "ro"], shell=ro),
        Case("read-only/resume", ["train", "--resume", str(run_copy)], [readonly], [root / "ro"], shell=ro),
        Case("read-only/predict", ["predict", str(brats_run), f"flair={flair}", "--out", str(root / "ro" / "s.nii.gz"),
                                   "--device", "cpu"], [readonly], [root / "ro"], shell=ro),
        Case("read-only/prepare-brats", ["prepare", "brats", str(source), str(root / "ro" / "cache"), "--workers", "1",
                                         "--no-progress"], [readonly], [root / "ro"], shell=ro),
    ]

    # ---- two processes on one output -------------------------------------------------------------------------
    busy = root / "runs" / "busy"
    long_run = ["train", str(good), "--out", str(busy), "--force", "--set", "train.iterations=200000", "--set", "seed=4"]
    ready = lambda: (busy.parent / ".busy.lock").exists() and bool(_staging(busy.parent, "busy"))  # noqa: E731
    in_use = "is in use by process"
    cases += [
        Case("concurrent/train-same-out", ["train", str(good), "--out", str(busy)], [in_use], holder=long_run,
             holder_ready=ready, after=_consistent_run(busy, 4)),
        Case("concurrent/train-force-same-out", ["train", str(good), "--out", str(busy), "--force"], [in_use],
             holder=long_run, holder_ready=ready),
        Case("concurrent/evaluate-while-training", ["evaluate", str(busy), "--device", "cpu"], [in_use],
             holder=long_run, holder_ready=ready),
        Case("concurrent/resume-while-training", ["train", "--resume", str(busy)], [in_use], holder=long_run,
             holder_ready=ready),
    ]
    big_source = root / "brats_src_many"
    for n in range(24):  # big enough that prepare takes a while (the holder, the signal below)
        case = big_source / f"case{n:02d}"
        case.mkdir(parents=True)
        head = np.zeros((96, 96, 64), np.float32)
        head[8:-8, 8:-8, 8:-8] = rng.uniform(1, 2, (80, 80, 48))
        for sequence in kit.SEQUENCES:
            kit.nifti(case / f"case{n:02d}_{sequence}.nii.gz", head)
        labels = np.zeros(head.shape, np.uint8)
        labels[40:50, 40:50, 30:36] = 2
        kit.nifti(case / f"case{n:02d}_seg.nii.gz", labels)
    busy_cache = root / "busy_cache"
    cases.append(Case("concurrent/prepare-same-out", ["prepare", "brats", str(big_source), str(busy_cache),
                                                      "--workers", "1", "--no-progress"], [in_use],
                      holder=["prepare", "brats", str(big_source), str(busy_cache), "--workers", "1", "--no-progress"],
                      holder_ready=lambda: (root / ".busy_cache.lock").exists()))

    # ---- signals at every phase --------------------------------------------------------------------------------
    def staged(folder: Path, name: str, file: str = "") -> bool:
        return any((p / file).exists() if file else True for p in _staging(folder, name))

    runs = root / "runs"
    setup = runs / "sig_setup"
    mid = runs / "sig_mid"
    ckpt = runs / "sig_ckpt"
    interrupt = runs / "sig_int"
    evaluation = runs / "sig_eval"
    long = ["--set", "train.iterations=100000", "--set", "train.log_every=5"]
    cases += [
        Case("signal/train-set-up", ["train", str(good), "--out", str(setup), *long], ["SIGTERM"], code=130,
             signal_when=lambda: staged(runs, "sig_setup", "config.yaml"),
             after=_resumes(root, setup, "--set", "train.iterations=10")),
        Case("signal/train-mid-run", ["train", str(good), "--out", str(mid), *long], ["SIGTERM stopped training",
                                                                                   "--resume"], code=130,
             signal_when=lambda: any(_lines(p / "metrics.jsonl") > 6 for p in _staging(runs, "sig_mid")),
             after=_resumes(root, mid, "--set", "train.iterations=10")),
        Case("signal/train-while-checkpointing", ["train", str(good), "--out", str(ckpt), *long,
                                                  "--set", "train.checkpoint_every=1"], ["SIGTERM", "--resume"],
             code=130, signal_when=lambda: _lines(ckpt / "metrics.jsonl") > 8,
             after=_resumes(root, ckpt, "--set", "train.iterations=10")),
        Case("signal/train-ctrl-c", ["train", str(good), "--out", str(interrupt), *long], ["SIGINT", "--resume"],
             code=130, signal=2, signal_when=lambda: any(_lines(p / "metrics.jsonl") > 6
                                                          for p in _staging(runs, "sig_int")),
             after=_resumes(root, interrupt, "--set", "train.iterations=10")),
        Case("signal/final-evaluation", ["train", str(kit.brats_config(root / "brats_eval.yaml", cache)), "--out",
                                         str(evaluation)], ["SIGTERM", f"mckd evaluate {evaluation}"], code=(130, 0),
             signal_when=lambda: (evaluation / "checkpoint.safetensors").exists(),
             after=_evaluates(root, evaluation)),
    ]
    sig_cache = root / "sig_cache"
    cases.append(Case("signal/prepare-with-two-workers", ["prepare", "brats", str(big_source), str(sig_cache),
                                                          "--workers", "2", "--no-progress"], ["SIGTERM"], [sig_cache],
                      code=130, signal_when=lambda: bool(_staging(root, "sig_cache"))
                      and any(p.is_dir() for s in _staging(root, "sig_cache") for p in s.iterdir())))
    sig_seg = root / "sig_seg.nii.gz"
    cases.append(Case("signal/predict", ["predict", str(brats_run), f"flair={flair}", "--out", str(sig_seg),
                                         "--device", "cpu"], ["SIGTERM"], [], code=(130, 0),
                      signal_when=lambda: (root / ".sig_seg.nii.gz.lock").exists()))

    # ---- divergence ----------------------------------------------------------------------------------------------
    inf_yaml = kit.write_yaml(root / "inf.yaml", good.read_text().replace("  batch_size: 32", "  batch_size: 32\n  lr: .inf"))
    cases += [
        Case("divergence/lr-1e30", ["train", str(good), "--out", str(o := out_dir()), "--set", "train.lr=1e30"],
             ["training diverged", "iteration", "nothing was kept"], [o]),
        Case("divergence/lr-inf-in-yaml", ["train", str(inf_yaml), "--out", str(o := out_dir())],
             ["train.lr must be a finite number, got inf"], [o]),
        Case("divergence/meta-lr-inf", ["train", str(good), "--out", str(o := out_dir()), "--set", "method.meta_lr=.inf"],
             ["method.meta_lr must be a finite number"], [o]),
        Case("divergence/alpha-nan", ["train", str(good), "--out", str(o := out_dir()), "--set", "method.alpha=.nan"],
             ["method.alpha must be a finite number"], [o]),
    ]
    diverging = runs / "diverging_existing"
    kit.copy_tree(digits_run, diverging)
    cases.append(Case("divergence/force-keeps-the-old-run", ["train", str(good), "--out", str(diverging), "--force",
                                                             "--set", "train.lr=1e30"],
                      ["training diverged", "nothing was kept"], [diverging]))

    # ---- runs that exist, lie or are damaged ---------------------------------------------------------------------
    binary_log = kit.copy_tree(digits_run, runs / "binary_log")
    (binary_log / "metrics.jsonl").write_bytes(bytes(range(128, 256)))
    text_log = kit.copy_tree(digits_run, runs / "text_log")
    (text_log / "metrics.jsonl").write_text('{"iteration": 1, "kind": "train"}\nnot json at all\n{}\n')
    from mckd.checkpoint import load_checkpoint, save_checkpoint

    bad_iteration = kit.copy_tree(digits_run, runs / "bad_iteration")
    tensors, metadata = load_checkpoint(bad_iteration / "checkpoint.safetensors")
    metadata.update(iteration="x", complete=False)
    save_checkpoint(bad_iteration / "checkpoint.safetensors", tensors, metadata)
    bad_config = kit.copy_tree(digits_run, runs / "bad_config")
    shutil.rmtree(bad_config / "eval")
    tensors, metadata = load_checkpoint(bad_config / "checkpoint.safetensors")
    metadata["config"]["model"]["hidden"] = "wide"
    save_checkpoint(bad_config / "checkpoint.safetensors", tensors, metadata)
    existing = kit.copy_tree(digits_run, runs / "existing")
    cases += [
        Case("runs/train-existing-out", ["train", str(good), "--out", str(existing)], ["exists", "--force", "--resume"],
             [existing]),
        Case("runs/resume-binary-metrics", ["train", "--resume", str(binary_log)], ["metrics.jsonl", "not a text log"],
             [binary_log / "checkpoint.safetensors"]),
        Case("runs/resume-non-json-metrics", ["train", "--resume", str(text_log)], ["metrics.jsonl' line 2",
                                                                                   "not a JSON record"],
             [text_log / "checkpoint.safetensors"]),
        Case("runs/resume-iteration-not-a-number", ["train", "--resume", str(bad_iteration)],
             ["bad_iteration/checkpoint.safetensors", "unreadable training state"], [bad_iteration]),
        Case("runs/checkpoint-config-invalid", ["evaluate", str(bad_config), "--device", "cpu"],
             ["config stored in checkpoint", "bad_config/checkpoint.safetensors", "model.hidden must be an integer"],
             [bad_config / "eval"]),
        Case("runs/compare-with-itself", ["compare", str(digits_run), str(digits_run) + "/"], ["are the same run"], []),
        Case("runs/compare-names-leave-the-run", ["compare", str(digits_run), str(digits_run.parent / "other_digits"),
                                                  "--names", "a", "/../../X"], ["is not a plain name"],
             [root.parent / "X", digits_run / "compare_vs_X"]),
        Case("runs/plot-seg-of-a-classification-run", ["plot-seg", str(digits_run), "--case", "case0", "--subset",
                                                       "fou", "--out", str(root / "p.png")],
             ["is a classification run"], [root / "p.png"]),
        Case("runs/plot-seg-duplicate-sequence", ["plot-seg", str(brats_run), "--case", "case0", "--subset",
                                                  "flair+flair", "--out", str(root / "p.png")],
             ["flair given more than once"], [root / "p.png"]),
    ]

    # ---- configs and options --------------------------------------------------------------------------------------
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))
    bomb_yaml = kit.write_yaml(root / "bomb.yaml", bomb + good.read_text().replace("  hidden: 16", "  hidden: *i"))
    twice = kit.write_yaml(root / "twice.yaml", good.read_text().replace("  batch_size: 32", "  batch_size: 32\n  batch_size: 64"))
    fifo = root / "fifo.yaml"
    os.mkfifo(fifo)
    cases += [
        Case("options/seed-beyond-64-bits", ["train", str(good), "--out", str(o := out_dir()), "--set", "seed=18446744073709551616"],
             ["seed must be an integer of at most 64 bits"], [o]),
        Case("options/task-set-to-segmentation", ["train", str(good), "--out", str(o := out_dir()), "--set", "task=segmentation"],
             ["task.name 'segmentation'"], [o]),
        Case("options/yaml-alias-bomb", ["train", str(bomb_yaml), "--out", str(o := out_dir())], ["alias bomb"], [o]),
        Case("options/yaml-duplicate-key", ["train", str(twice), "--out", str(o := out_dir())], ["'batch_size' appears twice"], [o]),
        Case("options/config-is-a-device", ["train", "/dev/zero", "--out", str(o := out_dir())], ["is a device"], [o]),
        Case("options/config-is-a-folder", ["train", str(root), "--out", str(o := out_dir())], ["is a folder, not a file"], [o]),
        Case("options/config-is-a-fifo", ["train", str(fifo), "--out", str(o := out_dir())], ["named pipe"], [o]),
        Case("options/seeds-twice", ["train", str(good), "--seeds", "0", "0", "--out", str(o := out_dir())],
             ["--seeds: 0 given more than once"], [o]),
        Case("options/methods-twice", ["benchmark", str(good), "--methods", "mckd", "mckd", "--seeds", "0", "--out",
                                       str(o := out_dir())], ["--methods: mckd given more than once"], [o]),
        Case("options/analyse-values-not-numbers", ["analyse", "alpha", str(good), "--values", "abc", "--out",
                                                    str(o := out_dir())], ["'abc' is not a number"], [o]),
        Case("options/prepare-workers-zero", ["prepare", "brats", str(source), str(root / "w0"), "--workers", "0"],
             ["--workers", "expected a whole number >= 1"], [root / "w0"]),
        Case("options/prepare-workers-negative", ["prepare", "brats", str(source), str(root / "w0"), "--workers", "-3"],
             ["--workers", "expected a whole number >= 1"], [root / "w0"]),
    ]

    # ---- files that said the wrong thing ---------------------------------------------------------------------------
    empty_src = kit.copy_tree(source, root / "src_empty_volume")
    kit.nifti(empty_src / "case2" / "case2_t2.nii.gz", np.ones((0, 12, 10), np.float32))
    nan_src = kit.copy_tree(source, root / "src_nan_affine")
    import nibabel as nib

    image = nib.load(str(nan_src / "case2" / "case2_t2.nii.gz"))
    header = image.header.copy()
    header.set_qform(None, code=0)
    header["srow_x"] = [np.nan, 0, 0, 0]
    header["sform_code"] = 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), str(nan_src / "case2" / "case2_t2.nii.gz"))
    zero_mask = kit.nifti(root / "zero_mask.nii.gz", np.zeros(kit.SHAPE, np.float32))
    prediction = root / "hostile_prediction.nii.gz"
    cases += [
        Case("files/nifti-empty-volume", ["prepare", "brats", str(empty_src), str(root / "c_empty"), "--workers", "1",
                                          "--no-progress"], ["case2_t2.nii.gz", "shape (0, 12, 10): an empty volume"],
             [root / "c_empty"]),
        Case("files/nifti-nan-affine", ["prepare", "brats", str(nan_src), str(root / "c_nan"), "--workers", "1",
                                        "--no-progress"], ["case2_t2.nii.gz", "NaN or Inf in its affine"],
             [root / "c_nan"]),
        Case("files/predict-input-is-a-folder", ["predict", str(brats_run), f"flair={source}", "--out", str(prediction),
                                                 "--device", "cpu"], ["is a folder, not a file"], [prediction]),
        Case("files/predict-input-is-a-device", ["predict", str(brats_run), "flair=/dev/zero", "--out",
                                                 str(prediction), "--device", "cpu"], ["is a device"], [prediction]),
        Case("files/predict-all-zero-mask", ["predict", str(brats_run), f"flair={flair}", "--mask", str(zero_mask),
                                             "--out", str(prediction), "--device", "cpu"],
             ["zero_mask.nii.gz (brain mask) is empty"], [prediction]),
    ]
    av = root / "avmnist_rate0"
    recordings = av / "recordings"
    recordings.mkdir(parents=True)
    for digit in range(10):
        for index in (0, 20, 21):
            kit.wav(recordings / f"{digit}_theo_{index}.wav", rng)
    zero_rate = recordings / "0_theo_0.wav"
    data = bytearray(zero_rate.read_bytes())
    data[24:28] = (0).to_bytes(4, "little")
    zero_rate.write_bytes(bytes(data))
    images = rng.integers(0, 256, (40, 28, 28))
    labels = np.arange(40) % 10
    import gzip

    (av / "images.gz").write_bytes(gzip.compress(kit.idx(images)))
    (av / "labels.gz").write_bytes(gzip.compress(kit.idx(labels)))
    cases.append(Case("files/wav-sample-rate-zero", ["prepare", "avmnist", "--images", str(av / "images.gz"), "--labels",
                                                     str(av / "labels.gz"), "--recordings", str(recordings), "--speakers",
                                                     "theo", "--val-per-digit", "1", "--out", str(av / "out.safetensors"),
                                                     "--no-progress"],
                      ["0_theo_0.wav", "sample rate of 0 Hz"], [av / "out.safetensors"]))
    return cases
