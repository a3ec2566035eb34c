"""Figures a radiologist would look at: one axial slice of every sequence, ground truth and prediction overlaid.

Top row: each sequence with the ground truth; bottom row: the same with the
prediction of a chosen subset of sequences (missing ones are drawn dimmed
and marked, the way the paper's Fig. 1 and Fig. 6 show them). Colours:
oedema green, necrotic / non-enhancing core red, enhancing tumour yellow
(resection cavity blue); the classes of other label sets in turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mckd.errors import MckdError
from mckd.seg.labels import LabelScheme, convention

TISSUE_COLOURS = {"core": (0.9, 0.1, 0.1), "oedema": (0.1, 0.8, 0.2), "enhancing": (1.0, 0.9, 0.0),
                  "cavity": (0.2, 0.5, 1.0)}
OTHER_COLOURS = ((0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (1.0, 0.9, 0.0), (0.2, 0.5, 1.0), (0.8, 0.3, 0.9),
                 (1.0, 0.5, 0.0), (0.0, 0.8, 0.8), (0.6, 0.4, 0.2))


def class_colours(scheme: LabelScheme | None = None) -> tuple[dict[int, tuple[float, float, float]], dict[int, str]]:
    """Colour and name per internal class but background: BraTS tissues in their usual colours, others in turn.

    ``scheme``: the run's labels (None: the BraTS classes, as runs of mckd 0.1 had).
    """
    scheme = scheme or convention("brats2023")
    colours, names = {}, {}
    for k in range(1, scheme.num_classes):
        tissue = scheme.tissues[k] if scheme.tissues else ""
        colours[k] = TISSUE_COLOURS.get(tissue, OTHER_COLOURS[(k - 1) % len(OTHER_COLOURS)])
        names[k] = scheme.classes[k]
    return colours, names


def _overlay(labels: np.ndarray, colours: dict[int, tuple[float, float, float]], alpha: float = 0.45) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, colour in colours.items():
        rgba[labels == value] = (*colour, alpha)
    return rgba


def tumour_slice(labels: np.ndarray) -> int:
    """The axial (last-axis) slice with the most tumour voxels; the middle one when there is no tumour."""
    counts = (labels > 0).sum(axis=(0, 1))
    return int(counts.argmax()) if counts.any() else labels.shape[2] // 2


def overlay_figure(
    images: Sequence[np.ndarray],
    names: Sequence[str],
    present: Sequence[bool],
    truth: np.ndarray,
    prediction: np.ndarray,
    out: str | Path,
    title: str = "",
    scheme: Any = None,
) -> Path:
    """Write the 2 x N figure for 2D axial slices (``[X, Y]`` each; shown with Y up-down as radiologists read)."""
    from mckd.report import _pyplot, _save_figure

    plt = _pyplot()
    colours, names_of = class_colours(scheme)
    n = len(images)
    # Constrained layout keeps each panel's caption clear of the panel above and the legend below the panels.
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 6.2), squeeze=False, layout="constrained")
    for col, (image, name, has) in enumerate(zip(images, names, present)):
        for row, labels in enumerate((truth, prediction)):
            ax = axes[row][col]
            ax.imshow(image.T, cmap="gray", origin="lower", alpha=1.0 if has or row == 0 else 0.25)
            ax.imshow(_overlay(labels, colours=colours).transpose(1, 0, 2), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            label = name if row == 0 else (name if has else f"{name} (missing)")
            ax.set_title(label, fontsize=9, color="black" if has or row == 0 else "grey")
        axes[0][0].set_ylabel("ground truth")
        axes[1][0].set_ylabel("prediction")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[v]) for v in colours]
    fig.legend(handles, [names_of[v] for v in colours], loc="outside lower center", ncol=min(4, len(colours)),
               fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_figure(fig, out)
    return Path(out)


@torch.no_grad()
def plot_case(run_dir: str | Path, case_id: str, subset: Sequence[str], out: str | Path,
              slice_index: int | None = None, device: str = "cpu") -> Path:
    """Segment cached case ``case_id`` with a trained run using only ``subset``, and draw the figure."""
    from mckd.runs import RunDir, checkpoint_config, load_run, read_checkpoint
    from mckd.seg.cache import read_dataset_record
    from mckd.seg.dataset import SegCases
    from mckd.seg.predict import SEGMENTATION_DATASETS
    from mckd.seg.segment import no_usable_sequence

    checkpoint = RunDir(run_dir).checkpoint
    if Path(run_dir).is_dir() and checkpoint.is_file():
        _, metadata = read_checkpoint(checkpoint)
        config = checkpoint_config(metadata, checkpoint)
        if config.task.name != "segmentation" or config.data.name not in SEGMENTATION_DATASETS:
            raise MckdError(f"run {str(run_dir)!r} is a {config.task.name} run on {config.data.name!r}; "
                            "plot-seg draws segmentation runs")
    if len(set(subset)) != len(subset):
        raise MckdError(f"subset {list(subset)} names a sequence twice; give each once (e.g. flair+t1ce)")
    experiment = load_run(run_dir, device)
    options = experiment.config.data.options
    modalities = experiment.model.modalities
    unknown = [m for m in subset if m not in modalities]
    if unknown or not subset:
        raise MckdError(f"subset {list(subset)}: choose sequences among {list(modalities)}")
    record = read_dataset_record(options.cache)
    if case_id not in record["cases"]:
        raise MckdError(f"case {case_id!r} is not in the cache {options.cache}; it has {record['cases'][:10]}...")
    cases = SegCases(options.cache, [case_id], modalities, options.downsample)
    sample = cases.read(0)
    torch_device = next(experiment.model.parameters()).device
    inputs = [torch.from_numpy(x)[None, None].to(torch_device) for x in sample["inputs"]]
    present = torch.tensor([[m in subset and bool(p) for m, p in zip(modalities, sample["present"])]], device=torch_device)
    if not bool(present.any()):
        raise no_usable_sequence(case_id, [m for m, p in zip(modalities, sample["present"]) if p], subset)
    model = experiment.model.eval()
    logits = experiment.task.infer(lambda xs, pr: model(xs, pr).prediction, inputs, present)
    prediction = experiment.task.to_labels(logits)[0].cpu().numpy()
    truth = sample["target"]
    z = tumour_slice(truth) if slice_index is None else slice_index
    if not 0 <= z < truth.shape[2]:
        raise MckdError(f"slice {z} is outside 0..{truth.shape[2] - 1}")
    images = [x[:, :, z] for x in sample["inputs"]]
    title = f"{case_id}, slice {z}: prediction from {'+'.join(subset)}"
    return overlay_figure(images, modalities, present[0].tolist(), truth[:, :, z], prediction[:, :, z], out, title,
                          getattr(experiment.task, "scheme", None))
