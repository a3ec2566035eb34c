"""The paper's analyses, each one call (and one ``mckd analyse`` command) writing a table and a plot.

- :func:`analyse_alpha`: the weight ``alpha`` of the distillation term, with L1
  (p = 1) and L2 (p = 2) distances (the paper's Fig. 3a);
- :func:`analyse_norm`: the normalisation of the importance weights, softmax,
  sigmoid or ReLU (the paper's Table 3);
- :func:`analyse_features`: how well Eq. 2 stands in for a removed modality
  over training: L1 distance and cosine similarity between the mean of the
  other modalities' features and the real feature of the removed one, with
  and without distillation (the paper's Fig. 5).

Every run goes through :func:`mckd.experiment.train_seeds` (same data, split,
network and budget), so each point is a mean over seeds and over every subset
of modalities on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.data.bundle import move_batch
from mckd.errors import ConfigError
from mckd.experiment import final_weights, method_config, train_seeds
from mckd.io import atomic_write_text
from mckd.report import Row, _pyplot, _save_figure, read_table, write_table
from mckd.train import Callback, train

ANALYSES = ("alpha", "norm", "features")
DEFAULT_ALPHAS = (0.0, 0.01, 0.1, 0.3, 1.0)
NORMALISATIONS = ("softmax", "sigmoid", "relu")


def _score(rows: Sequence[Row], metric: str, out: Path, seeds: Sequence[int]) -> Row:
    """Mean over all subsets, its standard deviation over seeds, and the mean over subsets of size 1."""
    per_seed = [float(np.mean([r[metric] for r in read_table(out / f"seed_{s}" / "eval" / "subsets.csv")]))
                for s in seeds]
    return {
        "all subsets": float(np.mean([r[metric] for r in rows])),
        "std over seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
        "single modality": float(np.mean([r[metric] for r in rows if int(r["size"]) == 1])),
    }


def analyse_alpha(
    config_path: str | Path,
    out: str | Path,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> list[Row]:
    """Sweep ``method.alpha`` with p = 1 and p = 2; write ``alpha.{md,csv,png}`` under ``out``."""
    out = Path(out)
    raw = load_raw(config_path)
    metric = config_from_dict(apply_overrides(raw, list(overrides))).task.options.primary_metric
    table: list[Row] = []
    trained: set[str] = set()
    for p in (1, 2):
        for alpha in alphas:
            # alpha = 0 does not depend on p: one run serves both curves
            name = "alpha_0" if alpha == 0 else f"p{p}_alpha_{alpha:g}"
            run = out / name
            if name not in trained:
                train_seeds(raw, [*overrides, f"method.alpha={alpha}", f"method.p={p}"], seeds, run, force=True)
                trained.add(name)
            rows = read_table(run / "subsets.csv")
            table.append({"p": p, "alpha": float(alpha), **_score(rows, metric, run, seeds), "run": name})
    write_table(table, out / "alpha", title=f"{metric} against alpha, L1 (p=1) and L2 (p=2); seeds {list(seeds)}",
                notes=f"Config `{config_path}`; {metric} on the test split, mean over every subset and over seeds.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for p, label in ((1, "L1"), (2, "L2")):
        rows = [r for r in table if r["p"] == p]
        ax.errorbar([r["alpha"] for r in rows], [r["all subsets"] for r in rows],
                    yerr=[r["std over seeds"] for r in rows], marker="o", capsize=3, label=label)
    ax.set_xscale("symlog", linthresh=min([a for a in alphas if a > 0], default=0.01))
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"mean {metric} over subsets")
    ax.set_title("Distillation weight alpha (Fig. 3a)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, out / "alpha.png")
    return table


def analyse_norm(
    config_path: str | Path,
    out: str | Path,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    normalisations: Sequence[str] = NORMALISATIONS,
) -> list[Row]:
    """Train with each weight normalisation; write ``norm.{md,csv,png}`` under ``out``."""
    out = Path(out)
    raw = load_raw(config_path)
    metric = config_from_dict(apply_overrides(raw, list(overrides))).task.options.primary_metric
    table: list[Row] = []
    for norm in normalisations:
        run = out / norm
        rows = train_seeds(raw, [*overrides, f"method.weight_norm={norm}"], seeds, run, force=True)
        weights = final_weights([run / f"seed_{s}" for s in seeds])
        ranked = sorted(weights, key=weights.get, reverse=True)
        table.append({"normalisation": norm, **_score(rows, metric, run, seeds),
                      "final weights": ", ".join(f"{m} {weights[m]:.3f}" for m in ranked)})
    write_table(table, out / "norm", title=f"{metric} by normalisation of the importance weights; seeds {list(seeds)}",
                notes=f"Config `{config_path}`; {metric} on the test split, mean over every subset and over seeds. "
                      "Final weights: mean over seeds, highest first.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    x = np.arange(len(table))
    # Points, not bars: an axis that does not start at 0 does not make a bar's length lie.
    means = [r["all subsets"] for r in table]
    ax.errorbar(x, means, yerr=[r["std over seeds"] for r in table], fmt="o", capsize=4, markersize=6)
    for xi, mean in zip(x, means):
        ax.annotate(f"{mean:.4f}", (xi, mean), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([r["normalisation"] for r in table])
    ax.set_xlim(-0.5, len(table) - 0.3)
    ax.set_xlabel("normalisation of w (bars: std over seeds)")
    ax.set_ylabel(f"mean {metric} over subsets")
    ax.set_title("Normalisation of the importance weights (Table 3)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, out / "norm.png")
    return table


def removed_modality_feature_quality(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How well Eq. 2 stands in for each modality when it alone is removed.

    For sample ``b`` and modality ``n``, the generated feature is the mean of
    the other ``N - 1`` modalities' features (Eq. 2 with every other modality
    present), compared with the real ``f_bn``.

    Args:
        features: ``[B, N, *F]``, every modality present; N >= 2.

    Returns:
        (l1, cosine), each ``[B, N]``: the mean absolute difference per element,
        and the cosine similarity of the flattened features.
    """
    n = features.shape[1]
    if n < 2:
        raise ValueError("removed_modality_feature_quality needs at least two modalities")
    flat = features.flatten(start_dim=2).float()  # (B, N, D)
    generated = (flat.sum(dim=1, keepdim=True) - flat) / (n - 1)  # (B, N, D): mean of the others
    l1 = (generated - flat).abs().mean(dim=-1)
    cosine = F.cosine_similarity(generated, flat, dim=-1, eps=1e-8)
    return l1, cosine


class FeatureQualityProbe(Callback):
    """A callback of :func:`mckd.train.train`: every ``every`` iterations, Eq. 2's quality on the validation split.

    ``history`` holds one entry per probe: the iteration, and the L1 distance
    and cosine similarity per modality (means over the split's samples); it
    is kept in the checkpoint, so a resumed run continues it.
    """

    name = "feature_quality"

    def __init__(self, every: int, batch_size: int = 512) -> None:
        self.every, self.batch_size = every, batch_size
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: Any) -> None:
        self.history = list(state["history"])

    @torch.no_grad()
    def on_iteration_end(self, iteration: int, experiment: Any) -> None:
        if iteration % self.every != 0 and iteration != 1:
            return
        model = experiment.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, model.num_modalities, dtype=torch.float64)
        count = 0
        for batch in DataLoader(experiment.bundle.val, batch_size=self.batch_size, shuffle=False):
            batch = move_batch(batch, device)
            present = torch.ones_like(batch["present"], dtype=torch.bool)
            features = model.encode(batch["inputs"], present)[model.distill_level]  # (B, N, *F)
            l1, cosine = removed_modality_feature_quality(features)
            sums += torch.stack([l1.sum(dim=0), cosine.sum(dim=0)]).double().cpu()
            count += features.shape[0]
        model.train(was_training)
        l1_mean, cos_mean = (sums / max(count, 1)).tolist()
        names = list(model.modalities)
        self.history.append({"iteration": iteration, "l1": dict(zip(names, l1_mean)),
                             "cosine": dict(zip(names, cos_mean))})


def analyse_features(
    config_path: str | Path,
    out: str | Path,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    methods: Sequence[str] = ("mckd", "baseline"),
    every: int = 0,
) -> list[Row]:
    """Eq. 2's generated features against the real ones over training; write ``features.{md,csv,png}``.

    Each method or preset (:func:`mckd.experiment.method_config`) is trained
    over the seeds with a :class:`FeatureQualityProbe` on the validation split
    (every ``every`` iterations; 0: ``train.log_every``).
    """
    out = Path(out)
    raw = load_raw(config_path)
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for name in methods:
        method_config(raw, name)  # an unknown name fails before anything trains
    for name in methods:
        curves[name] = {}
        for seed in seeds:
            config = config_from_dict(method_config(raw, name, [*overrides, f"seed={seed}"]))
            probe = FeatureQualityProbe(every or config.train.log_every)
            run = out / name / f"seed_{seed}"
            train(config, run, callbacks=[probe], force=True)
            atomic_write_text(run / "feature_quality.json", json.dumps(probe.history, indent=1))
            for entry in probe.history:
                l1 = float(np.mean(list(entry["l1"].values())))
                cosine = float(np.mean(list(entry["cosine"].values())))
                curves[name].setdefault(entry["iteration"], []).append((l1, cosine))
    table: list[Row] = []
    for name, points in curves.items():
        for iteration in sorted(points):
            values = np.array(points[iteration])  # (seeds, 2)
            table.append({"method": name, "iteration": iteration, "l1": float(values[:, 0].mean()),
                          "cosine": float(values[:, 1].mean()), "seeds": len(values)})
    finals = [r for r in table if r["iteration"] == max(x["iteration"] for x in table if x["method"] == r["method"])]
    write_table(table, out / "features",
                title=f"Eq. 2 feature of a removed modality against its real feature; seeds {list(seeds)}",
                notes="Validation split, every modality present but the removed one; mean over modalities, samples "
                      "and seeds. Final: " + "; ".join(f"{r['method']} L1 {r['l1']:.4f}, cosine {r['cosine']:.4f}"
                                                       for r in finals) + ".")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in curves:
        rows = [r for r in table if r["method"] == name]
        for ax, key in zip(axes, ("l1", "cosine")):
            ax.plot([r["iteration"] for r in rows], [r[key] for r in rows], label=name)
    axes[0].set_ylabel("L1 distance (mean per element)")
    axes[1].set_ylabel("cosine similarity")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Generated (Eq. 2) vs real feature of a removed modality (Fig. 5)")
    fig.tight_layout()
    _save_figure(fig, out / "features.png")
    return table


def analyse(kind: str, config_path: str | Path, out: str | Path, seeds: Sequence[int],
            overrides: Sequence[str] = (), values: Sequence[str] | None = None, force: bool = False) -> list[Row]:
    """Run analysis ``kind`` (``alpha``, ``norm`` or ``features``); ``values`` overrides what is swept.

    An existing ``out`` is refused unless ``force``.
    """
    from mckd.io import check_writes_into_own_folder, claim_output

    if kind not in ANALYSES:
        raise ConfigError(f"unknown analysis {kind!r}; known: {', '.join(ANALYSES)}")
    if kind == "alpha" and values:
        alphas = []
        for value in values:
            try:
                alphas.append(float(value))
            except ValueError:
                raise ConfigError(f"--values: {value!r} is not a number; alpha values are numbers >= 0, "
                                  "e.g. --values 0 0.1 1") from None
            if not np.isfinite(alphas[-1]) or alphas[-1] < 0:
                raise ConfigError(f"--values: alpha {value} must be a finite number >= 0")
    if kind == "norm" and values:
        unknown = [v for v in values if v not in NORMALISATIONS]
        if unknown:
            raise ConfigError(f"--values: {unknown} are not weight normalisations; choose among {list(NORMALISATIONS)}")
    check_writes_into_own_folder(out, "analysis folder")
    with claim_output(out, replace=force, kind="dir", what="analysis folder"):
        if kind == "alpha":
            return analyse_alpha(config_path, out, seeds, overrides, alphas if values else DEFAULT_ALPHAS)
        if kind == "norm":
            return analyse_norm(config_path, out, seeds, overrides, list(values) if values else NORMALISATIONS)
        return analyse_features(config_path, out, seeds, overrides, list(values) if values else ("mckd", "baseline"))
