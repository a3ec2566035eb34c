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

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.registry import register_task
from mckd.tasks.base import Facts, Forward, MeanOfSampleMetrics, require_target

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


@dataclass
class SegmentationOptions:
    """Options of the ``segmentation`` task (the data's crop, spacing and classes come from the dataset)."""

    head: Literal["regions", "labels"] = "regions"  # regions: 3 sigmoid channels ET/TC/WT, Dice+BCE (authors' code); labels: 4-class softmax, Dice+CE (paper text)
    overlap: float = 0.5  # sliding-window overlap at evaluation
    sw_batch_size: int = 2  # windows per forward pass at evaluation
    et_min_voxels: int = 0  # post-processing: an ET prediction under this many voxels (original grid) becomes core; 0 off, 500 in the BraTS literature

    @property
    def primary_metric(self) -> str:
        """The metric summaries report and comparisons test."""
        return "dice_mean"

    def validate(self, path: str) -> None:
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"{path}.overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"{path}.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.et_min_voxels < 0:
            raise ConfigError(f"{path}.et_min_voxels must be >= 0, got {self.et_min_voxels}")


def num_outputs(head: str) -> int:
    """Output channels of a head: 3 region channels (ET, TC, WT) or 4 label classes."""
    return 3 if head == "regions" else 4


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

    name = "segmentation"
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
        if num_classes != expected:
            raise ValueError(f"head {head!r} needs {expected} output channels, got {num_classes}")
        self.num_classes = num_classes
        self.num_outputs = num_classes
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

    def accumulator(self) -> MeanOfSampleMetrics:
        """The mean over cases of the per-case Dice and HD95."""
        return MeanOfSampleMetrics(self)

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


@register_task("segmentation", SegmentationOptions,
               "3D brain-tumour regions ET/TC/WT: Dice + (B)CE, sliding-window Dice and HD95")
def build_segmentation(options: SegmentationOptions, facts: Facts) -> SegmentationTask:
    """The task for data with ``facts`` ``roi`` (window = training crop), ``spacing`` and ``downsample``."""
    require_target("segmentation", facts, "label_map")
    step = int(facts.get("downsample", 1))
    return SegmentationTask(
        num_outputs(options.head),
        head=options.head,
        roi=facts["roi"],
        overlap=options.overlap,
        sw_batch_size=options.sw_batch_size,
        et_min_voxels=int(round(options.et_min_voxels / step**3)),  # the threshold is on the original grid
        spacing=facts.get("spacing", (1.0, 1.0, 1.0)),
    )
