"""The paper's Table 2 on Audiovision-MNIST over data draws and training seeds, and the protocol's effect.

Two parts, run by the same command (``--part``):

- ``table`` (default): Table 2's protocol for both directions (missing audio:
  images-only test; missing images: audio-only test) and r = 5/10/15/20%,
  for MCKD, the peers mckd has (no-CKD, ShaSpec, LCKD, HeMIS, zero filling,
  and Table 2's SMIL, Full2miss, autoencoder and GAN; ``--models`` picks),
  LowerB (the test modality alone) and UpperB (both modalities, complete),
  each over several **data draws** (the pairing seed of
  ``mckd prepare avmnist``: which MNIST image each recording gets, and which
  recordings are meta-validation) crossed with **training seeds**;
- ``protocol``: every difference between this protocol and the published
  ones, one at a time, missing audio: the lower bound trained as SMIL did
  (weight decay 1e-4, lr x0.1 every 20 epochs for 50 epochs, LeNet's 160
  features without the projection to 64, pixels in [-1, 1], the 150
  meta-validation samples added to training), batch 32, and the CKD distance
  as the paper's text writes it (the norm) against the per-element mean, with
  alpha swept for each. SMIL's selection of the best test epoch is reported
  in a row of its own, "the published protocol (selects on the test set)",
  never as a result.

Every run trains to the end and its final model is evaluated once on the
test split; it is also scored on the meta-validation split, the only split
settings are compared on. Runs live in ``<out>/<data>_d<draw>/<name>/seed_<s>``
and are skipped when finished, so an interrupted study continues and several
copies of the command share the work (each run is claimed by one process).

Statistics (``<out>/<part>.md``), made to stay sensible with few runs: per
cell the mean over every run and a 95% percentile bootstrap interval over
runs (data draws and training seeds resampled together; an interval of
means of observed accuracies never leaves [0, 100]); the share of the spread
due to the data draw (one-way random effects over draws, training seeds
within) beside; paired differences A - B on the same draw and seed, with a
bootstrap interval and an exact sign-flip test over runs; a cell with fewer
than 6 paired runs is marked as too few to tell two models apart (the
smallest two-tailed p such a test can give is 2 / 2^n). Each model's plain
sentence pools every rate (the mean of the rates' mean differences,
bootstrap within each rate) against MCKD, LowerB and ShaSpec.

    python benchmarks/avmnist_table.py --out runs/avmnist_table                    # Table 2 (part table)
    python benchmarks/avmnist_table.py --part protocol --out runs/avmnist_table    # the protocol study
    python benchmarks/avmnist_table.py --images X --labels Y --recordings Z --speakers a b c --data-name other ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the working tree's mckd, installed or not

from mckd.config import apply_overrides, config_from_dict, load_raw  # noqa: E402
from mckd.data.avmnist import DEFAULT_IMAGES, DEFAULT_LABELS, DEFAULT_RECORDINGS, prepare_avmnist  # noqa: E402
from mckd.data.audio import FSDD_SPEAKERS  # noqa: E402
from mckd.evaluation import evaluate_subsets  # noqa: E402
from mckd.experiment import method_config  # noqa: E402
from mckd.io import atomic_write_text  # noqa: E402
from mckd.report import (MIN_RUNS_TO_TELL, markdown_table, paired_runs, plot_weights, read_table,  # noqa: E402
                          read_weight_history, run_cell, write_table)
from mckd.runs import RunDir, evaluate_run  # noqa: E402
from mckd.train import Callback, train  # noqa: E402

CONFIGS = {"audio": ROOT / "configs" / "avmnist_missing_audio.yaml", "image": ROOT / "configs" / "avmnist_missing_image.yaml"}
OTHER = {"audio": "image", "image": "audio"}
RATES = (5, 10, 15, 20)
# The paper's Table 2 (missing audio, image-only test accuracy %, r = 5/10/15/20); UpperB tests both modalities.
PAPER = {"MCKD": [93.56, 94.22, 94.89, 95.11], "ShaSpec": [93.33, 93.56, 93.78, 94.67],
         "SMIL": [92.89, 93.11, 93.33, 94.44], "Full2miss": [90.00, 91.11, 92.23, 92.67],
         "autoencoder": [89.78, 89.33, 89.78, 88.89], "GAN": [89.11, 89.78, 88.67, 89.56],
         "LowerB": [92.35] * 4, "UpperB": [98.22] * 4}
# run name -> (method, label); the last four are Table 2's reconstruction peers (SMIL's and the paper's baselines)
PEERS = {"nockd": ("baseline", "no-CKD"), "shaspec": ("shaspec", "ShaSpec"), "lckd": ("lckd", "LCKD"),
         "hemis": ("hemis", "HeMIS"), "zero_fill": ("zero_fill", "zero filling"), "smil": ("smil", "SMIL"),
         "full2miss": ("full2miss", "Full2miss"), "autoencoder": ("autoencoder", "autoencoder"), "gan": ("gan", "GAN")}
MODELS = ("mckd", *PEERS)  # what --models chooses from (LowerB and UpperB are always in the plan)
BOUND = ["missing.policy=none"]
# Models that use no held-out split (no meta step, no teacher election) train on the 150 meta-validation samples
# too, as SMIL's lower bound did (105 per class): every model then learns from the same 1,050 labelled samples.
TRAIN_ON_VAL = ("data.train_on_val=true",)
USES_NO_VAL = {"baseline", "shaspec", "hemis", "zero_fill", "smil", "full2miss", "autoencoder", "gan"}
# The protocol study measures each difference from the paper's settings, which the configs held before it:
# pixels in [0, 1] and weight decay 1e-2 (the configs now use SMIL's, which the study found better).
PAPER_SETTINGS = ("data.image_range=unit", "train.weight_decay=0.01")
SYMMETRIC_WD = ["data.image_range=symmetric", "train.weight_decay=0.0001"]
SMIL_LOWERB = ["train.weight_decay=0.0001", "train.gamma=0.1", "train.step_epochs=20", "train.epochs=50",
               "model.project=false", "data.image_range=symmetric", "data.train_on_val=true"]


@dataclass(frozen=True)
class Spec:
    """One model of the study: its run name, direction, method and overrides, the subset it is reported on."""

    name: str
    label: str
    direction: str
    method: str
    overrides: tuple[str, ...]
    subset: str
    group: str = ""
    rate: int | None = None
    track_test: bool = False  # score the test split after every epoch (the labelled published-protocol row only)


def table_plan(rates: Sequence[int], directions: Sequence[str], models: Sequence[str] = MODELS) -> list[Spec]:
    """Table 2: UpperB, LowerB per direction, then per rate MCKD and the peers in ``models`` (bounds first).

    Models in ``USES_NO_VAL`` train on train + meta-validation (``TRAIN_ON_VAL``); MCKD and LCKD hold it out.
    """
    specs = [Spec("upperb", "UpperB", "audio", "baseline", (*BOUND, *TRAIN_ON_VAL), "image+audio", "bound")]
    for d in directions:
        t = OTHER[d]
        specs.append(Spec(f"missing_{d}/lowerb", f"LowerB ({t} only)", d, "baseline",
                          (f"data.modalities=[{t}]", *BOUND, *TRAIN_ON_VAL), t, "bound"))
    for rate in rates:
        for d in directions:
            rate_set = (f"missing.rates={{{d}: {rate / 100}}}",)
            t = OTHER[d]
            if "mckd" in models:
                specs.append(Spec(f"missing_{d}/r{rate}/mckd", "MCKD", d, "mckd", rate_set, t, "mckd", rate))
            for key, (method, label) in PEERS.items():
                if key not in models:
                    continue
                extra = TRAIN_ON_VAL if method in USES_NO_VAL else ()
                specs.append(Spec(f"missing_{d}/r{rate}/{key}", label, d, method, (*rate_set, *extra), t, key, rate))
    # SMIL with images missing costs 5-10x the others' runs (a second-order step through the audio encoder): last
    return sorted(specs, key=lambda spec: (spec.group, spec.direction) == ("smil", "image"))


def protocol_plan() -> list[Spec]:
    """The protocol differences, one at a time (missing audio, image-only test)."""
    lower = (f"data.modalities=[image]", *BOUND)
    specs = [Spec("protocol/lowerb", "LowerB as configured", "audio", "baseline", lower, "image", "lowerb")]
    for name, label, extra in [
        ("wd", "weight decay 1e-4 (SMIL)", ["train.weight_decay=0.0001"]),
        ("schedule", "lr x0.1 every 20 epochs, 50 epochs (SMIL)", ["train.gamma=0.1", "train.step_epochs=20",
                                                                    "train.epochs=50"]),
        ("batch32", "batch 32", ["train.batch_size=32"]),
        ("noproj", "LeNet's 160 features, no projection to 64 (SMIL)", ["model.project=false"]),
        ("symmetric", "pixels in [-1, 1] (SMIL)", ["data.image_range=symmetric"]),
        ("trainval", "train on train + meta-validation (SMIL: 105 per class)", ["data.train_on_val=true"]),
        ("smil", "all of SMIL's settings together", SMIL_LOWERB),
        ("symmetric_wd", "pixels in [-1, 1] + weight decay 1e-4", [*SYMMETRIC_WD]),
        ("symmetric_wd_trainval", "pixels in [-1, 1] + weight decay 1e-4 + train on train + meta-validation",
         [*SYMMETRIC_WD, "data.train_on_val=true"]),
        ("smil_but_schedule", "SMIL's settings but the paper's schedule (lr x0.9 every 20 epochs, 60 epochs)",
         [*SYMMETRIC_WD, "data.train_on_val=true", "model.project=false"]),
    ]:
        specs.append(Spec(f"protocol/lowerb_{name}", f"LowerB, {label}", "audio", "baseline", (*lower, *extra),
                          "image", "lowerb"))
    specs.append(Spec("protocol/lowerb_smil_best_test_epoch", "LowerB, SMIL's settings (best test epoch)", "audio",
                      "baseline", (*lower, *SMIL_LOWERB), "image", "published", track_test=True))
    for rate in (5, 20):
        rate_set = (f"missing.rates={{audio: {rate / 100}}}",)
        specs.append(Spec(f"protocol/r{rate}/nockd", "no-CKD", "audio", "baseline", rate_set, "image", "nockd", rate))
        specs.append(Spec(f"protocol/r{rate}/nockd_trainval", "no-CKD, train on train + meta-validation", "audio",
                          "baseline", (*rate_set, "data.train_on_val=true"), "image", "nockd", rate))
        specs.append(Spec(f"protocol/r{rate}/nockd_batch32", "no-CKD, batch 32", "audio", "baseline",
                          (*rate_set, "train.batch_size=32"), "image", "nockd", rate))
        specs.append(Spec(f"protocol/r{rate}/mckd_batch32", "MCKD, batch 32", "audio", "mckd",
                          (*rate_set, "train.batch_size=32"), "image", "mckd", rate))
        specs.append(Spec(f"protocol/r{rate}/mckd_wd", "MCKD, weight decay 1e-4", "audio", "mckd",
                          (*rate_set, "train.weight_decay=0.0001"), "image", "mckd", rate))
        specs.append(Spec(f"protocol/r{rate}/nockd_symmetric_wd", "no-CKD, pixels in [-1, 1] + weight decay 1e-4",
                          "audio", "baseline", (*rate_set, *SYMMETRIC_WD), "image", "nockd", rate))
        specs.append(Spec(f"protocol/r{rate}/nockd_symmetric_wd_trainval",
                          "no-CKD, pixels in [-1, 1] + weight decay 1e-4 + train on train + meta-validation", "audio",
                          "baseline", (*rate_set, *SYMMETRIC_WD, "data.train_on_val=true"), "image", "nockd", rate))
        specs.append(Spec(f"protocol/r{rate}/mckd_symmetric_wd", "MCKD, pixels in [-1, 1] + weight decay 1e-4",
                          "audio", "mckd", (*rate_set, *SYMMETRIC_WD), "image", "mckd", rate))
        for reduction, alphas in (("mean", (0.03, 0.1, 0.3, 1.0, 3.0)), ("norm", (0.001, 0.003, 0.01, 0.03, 0.1))):
            for alpha in alphas:
                specs.append(Spec(f"protocol/r{rate}/mckd_{reduction}_a{alpha:g}", f"MCKD, {reduction}, alpha {alpha:g}",
                                  "audio", "mckd", (*rate_set, f"method.ckd_reduction={reduction}",
                                                    f"method.alpha={alpha}"), "image", f"ckd_{reduction}", rate))
    return [replace(spec, overrides=(*PAPER_SETTINGS, *spec.overrides)) for spec in specs]


# --- data draws ----------------------------------------------------------------------------------------


def prepare_draws(args: argparse.Namespace) -> dict[int, Path]:
    """One prepared file per data draw (the pairing seed), made once under ``cache/avmnist_study``."""
    files = {}
    for draw in args.draws:
        path = ROOT / "cache" / "avmnist_study" / f"{args.data_name}_smil_d{draw}.safetensors"
        if not path.is_file():
            prepare_avmnist(args.images, args.labels, args.recordings, path, speakers=args.speakers, recipe="smil",
                            seed=draw, progress=False)
        files[draw] = path
    return files


# --- runs -----------------------------------------------------------------------------------------------


def claim(run_dir: Path) -> bool:
    """Take ``run_dir`` for this process unless another live process has it (several workers share one plan)."""
    marker = run_dir.parent / f".{run_dir.name}.claimed_by"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(marker.read_text() or 0), 0)
            return False  # a live worker is on it
        except (ProcessLookupError, ValueError):
            marker.unlink(missing_ok=True)  # a stopped worker's claim: take it over
            return claim(run_dir)
    with os.fdopen(fd, "w") as stream:
        stream.write(str(os.getpid()))
    return True


class TestAccuracyByEpoch(Callback):
    """After every epoch, the test accuracy of one subset: only for the labelled published-protocol row."""

    name = "test_by_epoch"

    def __init__(self, subset: str, train_batch_size: int, batch_size: int) -> None:
        self.subset, self.train_batch_size, self.batch_size = subset, train_batch_size, batch_size
        self.history: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: Any) -> None:
        self.history = list(state["history"])

    def on_iteration_end(self, iteration: int, experiment: Any) -> None:
        if iteration % max(1, len(experiment.bundle.train) // self.train_batch_size):  # an epoch's batches (drop_last)
            return
        model = experiment.model
        was_training = model.training
        device = next(model.parameters()).device
        rows = evaluate_subsets(model, experiment.task, experiment.bundle.test, self.batch_size, device,
                                subsets=[tuple(self.subset.split("+"))])
        model.train(was_training)
        self.history.append(float(rows[0]["accuracy"]))


def run_dir_of(out: Path, data_name: str, draw: int, spec: Spec, seed: int) -> Path:
    return out / f"{data_name}_d{draw}" / spec.name / f"seed_{seed}"


def run_one(spec: Spec, draw_file: Path, run_dir: Path, seed: int) -> bool:
    """Train, evaluate on the test and the meta-validation splits; False when finished before or claimed elsewhere."""
    run = RunDir(run_dir)
    if (run.eval_dir.parent / "eval_val" / "subsets.csv").is_file() or not claim(run_dir):
        return False
    raw = load_raw(CONFIGS[spec.direction])
    overrides = [f"data.path={draw_file}", *spec.overrides, f"seed={seed}", "train.progress=false"]
    config = config_from_dict(method_config(raw, spec.method, overrides))
    callbacks = [TestAccuracyByEpoch(spec.subset, config.train.batch_size, config.eval.batch_size)] \
        if spec.track_test else []
    start = time.perf_counter()
    # a run stopped part-way (SIGTERM saves a checkpoint) continues where it stopped: resuming is bit-exact
    experiment = train(config, run.path, callbacks=callbacks, resume=run.checkpoint.is_file())
    evaluate_run(run.path, "cpu")
    rows = evaluate_subsets(experiment.model, experiment.task, experiment.bundle.val, config.eval.batch_size,
                            torch.device("cpu"))
    write_table(rows, run.path / "eval_val" / "subsets", title="meta-validation split (for comparing settings)")
    if callbacks:
        atomic_write_text(run.path / "test_by_epoch.json", json.dumps(callbacks[0].history))
    print(f"{run.path.relative_to(run.path.parents[2])}: {time.perf_counter() - start:.0f} s", flush=True)
    return True


# --- statistics -------------------------------------------------------------------------------------------


def accuracy(path: Path, subset: str) -> float | None:
    """Accuracy (%) of ``subset`` in an evaluation table, None when the run has not finished."""
    if not path.is_file():
        return None
    rows = {r["subset"]: r for r in read_table(path)}
    return 100.0 * float(rows[subset]["accuracy"])


def values_of(out: Path, data_name: str, spec: Spec, draws: Sequence[int], seeds: Sequence[int],
              split: str = "eval") -> dict[tuple[int, int], float]:
    """``(draw, seed) -> accuracy %`` of the finished runs of ``spec`` on the test (``eval``) or ``eval_val`` split."""
    found = {}
    for draw in draws:
        for seed in seeds:
            run = run_dir_of(out, data_name, draw, spec, seed)
            value = accuracy(run / split / "subsets.csv", spec.subset)
            if value is not None:
                found[(draw, seed)] = value
    return found


def best_test_epoch(out: Path, data_name: str, spec: Spec, draws: Sequence[int], seeds: Sequence[int]) -> dict:
    found = {}
    for draw in draws:
        for seed in seeds:
            path = run_dir_of(out, data_name, draw, spec, seed) / "test_by_epoch.json"
            if path.is_file():
                found[(draw, seed)] = 100.0 * max(json.loads(path.read_text()))
    return found


def draw_share(values: dict[tuple[int, int], float]) -> float | None:
    """The share of the run-to-run variance due to the data draw (one-way random effects, seeds within draws)."""
    draws = sorted({d for d, _ in values})
    by_draw = [[v for (d, _), v in values.items() if d == draw] for draw in draws]
    seeds_per_draw = min((len(v) for v in by_draw), default=0)
    if len(draws) < 2 or seeds_per_draw < 2:
        return None
    means = np.array([np.mean(v) for v in by_draw])
    within = float(np.mean([np.var(v, ddof=1) for v in by_draw]))  # MS within: the training seeds' variance
    between = float(seeds_per_draw * means.var(ddof=1))  # MS between draws
    draw_var = max(0.0, (between - within) / seeds_per_draw)
    return draw_var / (draw_var + within) if draw_var + within > 0 else 0.0


def summarise(values: dict[tuple[int, int], float]) -> dict[str, Any]:
    """Mean over runs (every draw and seed), its 95% bootstrap interval over runs, the runs, the draw's share.

    Runs are resampled together, draws and seeds alike (the draw's share of the
    spread is measured and reported beside): the interval is made of means of
    observed accuracies, so it stays within [0, 100].
    """
    return {**run_cell(list(values.values())), "draw_share": draw_share(values)}


def paired(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float]) -> dict[str, Any]:
    """A - B on the same draw and seed: mean, 95% bootstrap interval over runs, sign-flip p-values, ``too_few``."""
    common = sorted(set(a) & set(b))
    return {**paired_runs([a[key] - b[key] for key in common]), "draws": len({d for d, _ in common})}


def paired_over_rates(a: dict[int, dict], b: dict[int, dict], b_per_rate: bool = True) -> dict[str, Any]:
    """A - B over every rate together (rate -> runs), paired on the same draw and seed.

    ``b_per_rate``: B trains a run per rate (a peer), so each (rate, draw, seed) is its own pair: the mean
    of the rates' mean differences, bootstrap strata = rates. False: B's runs are the same at every rate
    (LowerB), so one run of B must not count as several pairs: each (draw, seed)'s differences are
    averaged over the rates first and the pairs are the (draw, seed)s.
    """
    differences, strata, by_run = [], [], {}
    for rate in a:
        for key in sorted(set(a[rate]) & set(b.get(rate, {}))):
            differences.append(a[rate][key] - b[rate][key])
            strata.append(rate)
            by_run.setdefault(key, []).append(differences[-1])
    if not b_per_rate:
        return {**paired_runs([float(np.mean(v)) for v in by_run.values()]), "rates": sorted(set(strata))}
    return {**paired_runs(differences, strata), "rates": sorted(set(strata))}


def fmt(summary: dict[str, Any], key: str = "mean") -> str:
    if summary.get(key) is None:
        return "—"
    text = f"{summary[key]:.2f}"
    if summary.get("low") is not None:
        text += f" [{summary['low']:.2f}, {summary['high']:.2f}]"
    return text


def fmt_p(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def fmt_difference(cell: dict[str, Any]) -> str:
    """``+0.52 [-0.30, 1.20] (p 0.31)``; a dagger where too few runs can tell the two apart."""
    if cell.get("difference") is None:
        return "—"
    return f"{fmt(cell, 'difference')} (p {fmt_p(cell['p_two'])}){' †' if cell['too_few'] else ''}"


# --- reports ------------------------------------------------------------------------------------------------


REFERENCES = ("MCKD", "LowerB", "ShaSpec")  # each row's plain sentence compares it with these


def report_table(out: Path, args: argparse.Namespace, command: str) -> str:
    specs = table_plan(args.rates, args.directions, args.models)
    by_name = {s.name: s for s in specs}
    get = lambda name: values_of(out, args.data_name, by_name[name], args.draws, args.seeds)  # noqa: E731
    rows, csv_rows, sentences = [], [], []
    rates = list(args.rates)
    models = [(label, key) for label, key in [("MCKD", "mckd")] + [(label, k) for k, (_, label) in PEERS.items()]
              if key in args.models]
    for d in args.directions:
        t = OTHER[d]
        direction = f"missing {d} ({t}-only test)"
        lower = get(f"missing_{d}/lowerb")
        by_label = {label: {r: get(f"missing_{d}/r{r}/{key}") for r in rates} for label, key in models}
        by_label["LowerB"] = {r: lower for r in rates}
        for label, key in models:
            cells = [summarise(by_label[label][r]) for r in rates]
            rows.append({"direction": direction, "model": label, **{f"r = {r}%": fmt(c) for r, c in zip(rates, cells)}})
            csv_rows += [{"direction": d, "model": label, "rate": r, **c} for r, c in zip(rates, cells)]
        low = summarise(lower)
        rows.append({"direction": direction, "model": f"LowerB ({t} only)", **{f"r = {r}%": fmt(low) for r in rates}})
        csv_rows.append({"direction": d, "model": "LowerB", "rate": "", **low})
        if "MCKD" in by_label:
            for label in ["LowerB"] + [label for label, key in models if key != "mckd"]:
                cells = [paired(by_label["MCKD"][r], by_label[label][r]) for r in rates]
                rows.append({"direction": direction, "model": f"MCKD − {label} (p, two-tailed)",
                             **{f"r = {r}%": fmt_difference(c) for r, c in zip(rates, cells)}})
                csv_rows += [{"direction": d, "model": f"MCKD - {label}", "rate": r, **c} for r, c in zip(rates, cells)]
        for label, values in PAPER.items():
            if d == "audio" and label != "UpperB":
                rows.append({"direction": direction, "model": f"paper: {label}",
                             **{f"r = {r}%": f"{values[RATES.index(r)]:.2f}" for r in rates if r in RATES}})
        sentences.append(f"**{direction}**, every r together (each difference the mean over the rates where both "
                         "models have runs, named in each clause, of the paired differences; against LowerB, whose "
                         "runs are the same at every r, each draw and seed is one pair, its differences averaged over "
                         "r; [95% bootstrap interval over runs], p: two-tailed sign-flip test over runs):")
        for label, _ in models:
            verdicts = []
            for reference in REFERENCES:
                if reference == label or reference not in by_label:
                    continue
                cell = paired_over_rates(by_label[label], by_label[reference], b_per_rate=reference != "LowerB")
                csv_rows.append({"direction": d, "model": f"{label} - {reference}", "rate": "all", **cell})
                verdicts.append(verdict(reference, cell))
            sentences.append(f"- **{label}**: " + "; ".join(verdicts) + ".")
        sentences.append("")
    upper = summarise(values_of(out, args.data_name, by_name["upperb"], args.draws, args.seeds))
    rows.append({"direction": "both complete (image+audio test)", "model": "UpperB",
                 **{f"r = {r}%": fmt(upper) for r in rates}})
    rows.append({"direction": "both complete (image+audio test)", "model": "paper: UpperB",
                 **{f"r = {r}%": f"{PAPER['UpperB'][0]:.2f}" for r in rates}})
    csv_rows.append({"direction": "none", "model": "UpperB", "rate": "", **upper})
    shares = [row["draw_share"] for row in csv_rows if row.get("draw_share") is not None]
    share_text = ""
    if shares:
        share_text = (f"Share of the run-to-run variance due to the data draw (one-way random effects, over the "
                      f"{len(shares)} cells): median {np.median(shares):.0%}, range {min(shares):.0%}-"
                      f"{max(shares):.0%}; the rest is the training seed's.")
    runs = sorted({row["runs"] for row in csv_rows if "runs" in row and row["runs"]})
    too_few = (f"† fewer than {MIN_RUNS_TO_TELL} paired runs: an exact sign-flip test cannot reach p < 0.05 "
               "(two-tailed) with so few, so the cell alone cannot tell the two models apart, whatever its numbers; "
               "the sentences below pool every r.")
    weight_lines = fig4b(out, args, specs) if "mckd" in args.models else []
    text = "\n".join([
        f"Test accuracy (%), mean over {len(args.draws)} data draws (pairing seeds {list(args.draws)}, data "
        f"`{args.data_name}`) x {len(args.seeds)} training seeds {list(args.seeds)} (runs per cell: "
        f"{', '.join(map(str, runs))}), [95% bootstrap interval over runs: draws and seeds resampled together, so an "
        "accuracy interval stays within [0, 100]]; the final model of each run, nothing selected on the test split. "
        f"Models without a held-out split ({', '.join(label for label, key in models if key != 'mckd' and key != 'lckd')}, "
        "LowerB, UpperB) train on train + meta-validation (1,050 samples, as SMIL's lower bound); MCKD and LCKD train "
        "on 900 and keep 150 for their meta step or teacher election. Paired differences: the same draw and seed; "
        "p: two-tailed sign-flip test over runs.",
        "", markdown_table(rows), "", too_few, "", share_text, "", *sentences, *weight_lines, "",
        f"Command: `{command}`", ""])
    atomic_write_text(out / "table.md", text)
    columns = list(dict.fromkeys(key for row in csv_rows for key in row))  # cells and paired differences differ
    write_table([{key: row.get(key) for key in columns} for row in csv_rows], out / "table_values",
                title="every cell's statistics")
    return text


def verdict(reference: str, cell: dict[str, Any]) -> str:
    """One clause: ahead of, behind or not distinguishable from ``reference``, with the interval."""
    if cell["difference"] is None:
        return f"no paired runs with {reference}"
    numbers = f"{cell['difference']:+.2f} [{cell['low']:+.2f}, {cell['high']:+.2f}] points, p {fmt_p(cell['p_two'])}"
    if cell.get("rates"):  # pooled over the rates where both models have runs
        numbers += f", r = {', '.join(map(str, cell['rates']))}%"
    if cell["too_few"]:
        return f"too few runs to tell from {reference} ({numbers}, {cell['pairs']} pairs)"
    if cell["low"] > 0 and cell["p_two"] < 0.05:
        return f"ahead of {reference} ({numbers})"
    if cell["high"] < 0 and cell["p_two"] < 0.05:
        return f"behind {reference} ({numbers})"
    if cell["low"] > 0 or cell["high"] < 0:  # the two statistics disagree: say both, conclude nothing
        side = "ahead of" if cell["low"] > 0 else "behind"
        return (f"not distinguishable from {reference} by the sign-flip test, though the interval is {side} it "
                f"({numbers})")
    return f"not distinguishable from {reference} ({numbers})"


def fig4b(out: Path, args: argparse.Namespace, specs: list[Spec]) -> list[str]:
    """Fig. 4b from the table's MCKD runs: the weights over training per direction and rate; their final values."""
    lines = ["Final importance weights of MCKD (softmax), mean over every draw and seed (min-max):", "",
             "| direction | r | image | audio | runs |", "|---|---|---|---|---|"]
    for d in args.directions:
        for r in args.rates:
            spec = next(s for s in specs if s.name == f"missing_{d}/r{r}/mckd")
            paths = [RunDir(run_dir_of(out, args.data_name, draw, spec, seed)).metrics for draw in args.draws
                     for seed in args.seeds
                     if (run_dir_of(out, args.data_name, draw, spec, seed) / "eval_val" / "subsets.csv").is_file()]
            if not paths:
                continue
            finals = [{m: v[-1] for m, v in read_weight_history(p)[1].items()} for p in paths]
            cells = [f"{np.mean([f[m] for f in finals]):.3f} ({min(f[m] for f in finals):.3f}-"
                     f"{max(f[m] for f in finals):.3f})" for m in ("image", "audio")]
            lines.append(f"| missing {d} | {r}% | {cells[0]} | {cells[1]} | {len(finals)} |")
            plot_weights(paths, out / f"weights_missing_{d}_r{r}.png",
                         title=f"AV-MNIST importance weights, missing {d}, r = {r}%")
    return lines


def report_protocol(out: Path, args: argparse.Namespace, command: str) -> str:
    """One row per protocol difference: test and meta-validation accuracy, and the paired difference to its reference."""
    specs = protocol_plan()
    test = {s.name: values_of(out, args.data_name, s, args.draws, args.seeds) for s in specs}
    meta = {s.name: values_of(out, args.data_name, s, args.draws, args.seeds, "eval_val") for s in specs}
    for s in specs:
        if s.track_test:  # the best epoch on the test set: reported, labelled, never a result
            test[s.name] = best_test_epoch(out, args.data_name, s, args.draws, args.seeds)
    rows = []
    for spec in specs:
        reference = "protocol/lowerb" if spec.group in ("lowerb", "published") else f"protocol/r{spec.rate}/nockd"
        difference = paired(test[spec.name], test[reference]) if spec.name != reference else {}
        rows.append({
            "model": ("the published protocol (selects on the test set): " if spec.track_test else "") + spec.label,
            "r": f"{spec.rate}%" if spec.rate else "",
            "test": fmt(summarise(test[spec.name])),
            "meta-validation": "—" if spec.track_test else fmt(summarise(meta[spec.name])),
            "− its reference, same draw and seed": fmt(difference, "difference") if difference else "",
            "runs": len(test[spec.name]),
        })
    text = "\n".join([
        f"Missing audio, image-only accuracy (%), mean [95% interval over data draws], {len(args.draws)} draws x "
        f"{len(args.seeds)} seeds. A LowerB row's reference is 'LowerB as configured'; an r row's, the no-CKD run "
        "at that r. Settings are compared on the meta-validation column (150 samples; not meaningful where those "
        "samples were trained on); the test column is reported, never used to choose.",
        "", markdown_table(rows), "",
        f"Paper: LowerB {PAPER['LowerB'][0]}, UpperB {PAPER['UpperB'][0]}, MCKD {PAPER['MCKD']} (r = 5/10/15/20%).",
        "", f"Command: `{command}`", ""])
    atomic_write_text(out / "protocol.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["table", "protocol"], default="table")
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES), help="percentages (default: 5 10 15 20)")
    parser.add_argument("--directions", nargs="+", choices=["audio", "image"], default=["audio", "image"])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="data draws: pairing seeds of mckd prepare avmnist (default: 0 1 2 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    parser.add_argument("--images", default=str(ROOT / DEFAULT_IMAGES), help="MNIST images IDX (default: the shared part a)")
    parser.add_argument("--labels", default=str(ROOT / DEFAULT_LABELS), help="MNIST labels IDX")
    parser.add_argument("--recordings", default=str(ROOT / DEFAULT_RECORDINGS), help="FSDD recordings folder")
    parser.add_argument("--speakers", nargs="+", default=list(FSDD_SPEAKERS), help="FSDD speakers")
    parser.add_argument("--data-name", default="shared", help="names these sources in the run and cache folders")
    parser.add_argument("--out", default="runs/avmnist_table", help="output folder (default: runs/avmnist_table)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    parser.add_argument("--only", default="", help="run only the models whose run name contains this")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="Table 2's models besides LowerB and UpperB (default: all: " + " ".join(MODELS) + ")")
    args = parser.parse_args(argv)
    out = Path(args.out)
    chosen = []  # the grid as given (rates, directions, models), so the printed command rebuilds this report
    for flag, value, default in (("--rates", args.rates, list(RATES)), ("--directions", args.directions,
                                  ["audio", "image"]), ("--models", args.models, list(MODELS))):
        if list(value) != list(default):
            chosen += [flag, *map(str, value)]
    command = " ".join(["python benchmarks/avmnist_table.py", "--part", args.part, *chosen, "--draws",
                        *map(str, args.draws), "--seeds", *map(str, args.seeds), "--data-name", args.data_name,
                        "--out", str(out)])
    if not args.report_only:
        files = prepare_draws(args)
        specs = table_plan(args.rates, args.directions, args.models) if args.part == "table" else protocol_plan()
        # the first draw of every model first (its seeds innermost), then the next draw: a study stopped early
        # has every cell, with fewer runs
        for draw in args.draws:
            for spec in (s for s in specs if args.only in s.name):
                for seed in args.seeds:
                    run_one(spec, files[draw], run_dir_of(out, args.data_name, draw, spec, seed), seed)
    print(report_table(out, args, command) if args.part == "table" else report_protocol(out, args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
