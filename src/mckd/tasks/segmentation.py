"""Brain-tumour segmentation: region losses, BraTS metrics, sliding-window inference, post-processing.

Labels are the internal ones (0 background, 1 necrotic / non-enhancing core,
2 oedema, 3 enhancing); the BraTS regions are ET = {3}, TC = {1, 3},
WT = {1, 2, 3}. Two heads:

- ``regions`` (the authors' code): 3 sigmoid channels ET, TC, WT; loss = soft
  Dice (MONAI ``DiceLoss``, sigmoid) + binary cross-entropy, per channel. A
  prediction becomes labels as in the authors' evaluation: WT -> oedema,
  then TC -> core, then ET -> enhancing, so the regions are always nested.
- ``labels`` (the paper's text): 4 softmax classes; loss = MONAI
  ``DiceCELoss`` (soft Dice + cross-entropy); labels by arg-max.

Metrics per sample and region (MONAI ``compute_dice`` and
``compute_hausdorff_distance`` at the 95th percentile, in mm):

- Dice: an empty prediction against an empty ground truth scores **1**
  (MONAI's default would give NaN, which then aggregates as 0); a non-empty
  prediction against an empty ground truth scores 0.
- HD95: both empty gives **0**; exactly one empty gives **373.13 mm**, the
  value the BraTS evaluation uses (the diagonal of the 240 x 240 x 155 mm
  volume).

Optional post-processing (``et_min_voxels`` > 0): an ET prediction with fewer
voxels than the threshold is relabelled as core (necrosis), as BraTS
submissions commonly do with 500 voxels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from mckd.tasks.base import Forward

REGIONS = ("ET", "TC", "WT")
HD95_ONE_EMPTY = 373.13  # mm: BraTS's value when exactly one of prediction and ground truth is empty
NECROSIS, EDEMA, ENHANCING = 1, 2, 3


def regions_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """Internal labels ``[B, *S]`` -> bool regions ``[B, 3, *S]`` (ET, TC, WT)."""
    et = labels == ENHANCING
    tc = et | (labels == NECROSIS)
    wt = labels > 0
    return torch.stack([et, tc, wt], dim=1)


def labels_from_regions(regions: torch.Tensor) -> torch.Tensor:
    """Bool regions ``[B, 3, *S]`` (ET, TC, WT) -> internal labels ``[B, *S]``: WT, then TC, then ET overwrite."""
    labels = torch.zeros(regions[:, 0].shape, dtype=torch.uint8, device=regions.device)
    labels[regions[:, 2]] = EDEMA
    labels[regions[:, 1]] = NECROSIS
    labels[regions[:, 0]] = ENHANCING
    return labels


def relabel_small_enhancing(labels: torch.Tensor, min_voxels: int) -> torch.Tensor:
    """Per sample: if fewer than ``min_voxels`` voxels are enhancing, make them core (necrosis)."""
    if min_voxels <= 0:
        return labels
    labels = labels.clone()
    for b in range(labels.shape[0]):
        enhancing = labels[b] == ENHANCING
        count = int(enhancing.sum())
        if 0 < count < min_voxels:
            labels[b][enhancing] = NECROSIS
    return labels


def dice_per_region(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice ``[B, 3]`` of bool regions ``[B, 3, *S]``; both empty -> 1."""
    from monai.metrics import compute_dice

    return compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)


def hd95_per_region(pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """95th-percentile Hausdorff distance ``[B, 3]`` in mm; both empty -> 0, one empty -> 373.13."""
    import warnings

    from monai.metrics import compute_hausdorff_distance

    pred, target = pred.cpu(), target.cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty region; the convention below handles them
        hd = compute_hausdorff_distance(pred.float(), target.float(), include_background=True, percentile=95,
                                        spacing=list(spacing))
    dims = tuple(range(2, pred.dim()))
    pred_empty, target_empty = ~pred.any(dim=dims), ~target.any(dim=dims)  # (B, 3)
    hd = torch.where(pred_empty & target_empty, torch.zeros_like(hd), hd)
    hd = torch.where(pred_empty ^ target_empty, torch.full_like(hd, HD95_ONE_EMPTY), hd)
    return hd


class SegmentationTask:
    """3D brain-tumour segmentation (BraTS regions); see the module docstring for the conventions.

    Args:
        num_classes: output channels (3 for ``regions``, 4 for ``labels``).
        head: ``"regions"`` or ``"labels"``.
        roi: sliding-window size ``[X, Y, Z]`` (the training crop).
        overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
        et_min_voxels: post-processing threshold on this grid (0: off).
        spacing: voxel size in mm for HD95.
    """

    metric_names = ("dice_mean", "dice_et", "dice_tc", "dice_wt", "hd95_et", "hd95_tc", "hd95_wt")
    primary_metric = "dice_mean"
    higher_is_better = {name: name.startswith("dice") for name in metric_names}

    def __init__(
        self,
        num_classes: int,
        head: str = "regions",
        roi: Sequence[int] = (128, 128, 128),
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        et_min_voxels: int = 0,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        from monai.losses import DiceCELoss, DiceLoss

        if head not in ("regions", "labels"):
            raise ValueError(f"head must be 'regions' or 'labels', got {head!r}")
        expected = 3 if head == "regions" else 4
        if num_classes != expected and num_classes != 2:  # 2: build_task(task, 2) only asks for metric names
            raise ValueError(f"head {head!r} needs {expected} output channels, got {num_classes}")
        self.num_classes = num_classes
        self.head = head
        self.roi = tuple(int(r) for r in roi)
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.et_min_voxels = et_min_voxels
        self.spacing = tuple(float(s) for s in spacing)
        self._dice = DiceLoss(sigmoid=True)  # regions: mean over samples and channels
        self._dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)  # labels

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice + (binary) cross-entropy of logits ``[B, C, *S]`` against labels ``[B, 1, *S]``; float32."""
        prediction = prediction.float()
        if self.head == "regions":
            regions = regions_from_labels(target[:, 0]).float()  # (B, 3, *S)
            return self._dice(prediction, regions) + F.binary_cross_entropy_with_logits(prediction, regions)
        return self._dice_ce(prediction, target.long())

    def to_labels(self, prediction: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, *S]`` -> internal labels ``[B, *S]`` (uint8), post-processed."""
        if self.head == "regions":
            labels = labels_from_regions(prediction > 0)  # sigmoid > 0.5
        else:
            labels = prediction.argmax(dim=1).to(torch.uint8)
        return relabel_small_enhancing(labels, self.et_min_voxels)

    def sample_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dice and HD95 per region, ``[B]`` each, plus ``dice_mean`` (mean of the three Dice scores)."""
        pred = regions_from_labels(self.to_labels(prediction))  # (B, 3, *S)
        truth = regions_from_labels(target[:, 0])
        dice = dice_per_region(pred, truth).cpu()  # (B, 3)
        hd = hd95_per_region(pred, truth, self.spacing)  # (B, 3)
        out = {"dice_mean": dice.mean(dim=1)}
        for k, region in enumerate(REGIONS):
            out[f"dice_{region.lower()}"] = dice[:, k]
            out[f"hd95_{region.lower()}"] = hd[:, k]
        return out

    def infer(self, forward: Forward, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits ``[B, C, X, Y, Z]`` for inputs ``N x [B, 1, X, Y, Z]`` (Gaussian blending)."""
        from monai.inferers import sliding_window_inference

        stacked = torch.cat(list(inputs), dim=1)  # (B, N, X, Y, Z)
        outputs = []
        for b in range(stacked.shape[0]):
            row = present[b : b + 1]  # (1, N)

            def predictor(window: torch.Tensor, row: torch.Tensor = row) -> torch.Tensor:
                parts = [window[:, n : n + 1] for n in range(window.shape[1])]  # N x (w, 1, *roi)
                return forward(parts, row.expand(window.shape[0], -1))

            outputs.append(sliding_window_inference(
                stacked[b : b + 1], self.roi, self.sw_batch_size, predictor, overlap=self.overlap, mode="gaussian"))
        return torch.cat(outputs, dim=0)

    def write_report(self, rows: Sequence[dict[str, Any]], stem: str | Path, modalities: Sequence[str]) -> None:
        """The paper's Table 1 layout: one column per sequence (present / missing), Dice ET TC WT, HD95, averages."""
        from mckd.checkpoint import atomic_write_text

        atomic_write_text(Path(str(stem) + ".md"), table1(rows, modalities))


def table1(rows: Sequence[dict[str, Any]], modalities: Sequence[str]) -> str:
    """Markdown: a row per subset with ● (present) / ○ (missing) per sequence, Dice and HD95 per region, an average row."""
    dice_cols = [f"dice_{r.lower()}" for r in REGIONS]
    hd_cols = [f"hd95_{r.lower()}" for r in REGIONS]
    header = [*modalities, "Dice ET", "Dice TC", "Dice WT", "Dice mean", "HD95 ET", "HD95 TC", "HD95 WT"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def fmt(values: Sequence[float], digits: int) -> list[str]:
        return ["nan" if math.isnan(v) else f"{v:.{digits}f}" for v in values]

    for row in rows:
        names = str(row["subset"]).split("+")
        marks = ["●" if m in names else "○" for m in modalities]
        dice = [100 * float(row[c]) for c in dice_cols]
        hd = [float(row[c]) for c in hd_cols]
        lines.append("| " + " | ".join(marks + fmt(dice + [sum(dice) / 3], 2) + fmt(hd, 2)) + " |")
    if rows:
        means = [100 * sum(float(r[c]) for r in rows) / len(rows) for c in dice_cols]
        hd_means = [sum(float(r[c]) for r in rows) / len(rows) for c in hd_cols]
        lines.append("| " + " | ".join(["**average**"] + [""] * (len(modalities) - 1)
                                       + [f"**{v}**" for v in fmt(means + [sum(means) / 3], 2)]
                                       + [f"**{v}**" for v in fmt(hd_means, 2)]) + " |")
    note = ("\nDice in %, HD95 in mm, mean over test cases per subset of sequences (● present, ○ missing). "
            "Empty prediction and empty ground truth: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 373.13.\n")
    return "\n".join(lines) + "\n" + note
