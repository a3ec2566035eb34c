"""3D segmentation for any declared label set: losses, Dice and HD95 per class or region, sliding-window inference.

The data declare their labels (:class:`mckd.seg.labels.LabelScheme`, in the
task's facts as ``labels``): classes ``0..K-1`` (0 the background) and,
optionally, nested regions (nnU-Net's region-based labels; BraTS's ET / TC /
WT). The evaluated targets are the regions when there are any, else the
classes other than background. Two heads:

- ``regions``: one sigmoid channel per region; loss = soft Dice (MONAI
  ``DiceLoss``, sigmoid) + binary cross-entropy, per channel (the MCKD
  authors' code on BraTS). A prediction becomes labels by writing each
  region's class in the declared decoding order (BraTS: WT -> oedema, then
  TC -> core, then ET -> enhancing), so the regions are always nested.
- ``labels``: K softmax classes; loss = MONAI ``DiceCELoss``; labels by arg-max.

``head: auto`` (the default) is ``regions`` when the data declare regions and
``labels`` otherwise.

**The head starts at the targets' priors** (``output_prior: true``, as the
shipped configs set it):
the logits are the network's output plus a fixed offset, the log-odds of each
region's share of the training cases' voxels (``regions``; BraTS: ET about 1%,
TC 2%, WT 5%) or the log of each class's share (``labels``), so an untrained
model predicts each target at its frequency, as RetinaNet's prior
initialisation of its classification bias does (Lin et al., 2017). Without it
the sigmoid channels start at p = 0.5 on every voxel; Adam moves the output
bias by at most the learning rate per step, so the small nested regions (ET,
TC) spend hundreds of iterations unlearning that start, and a short run (the
300-iteration CPU recipe) may end before they cross 0.5 anywhere: ET = TC = 0
for some seeds. The offset is what a bias initialised at the prior would be
(the learned bias starts at 0 on top of it). The option's default is false,
so a run whose config predates it (its stored config has no such key)
evaluates and predicts as it was trained.

Metrics per sample and target (MONAI ``compute_dice`` and
``compute_hausdorff_distance`` at the 95th percentile, in mm):

- Dice: an empty prediction against an empty ground truth scores **1**
  (MONAI's default would give NaN, which then aggregates as 0); a non-empty
  prediction against an empty ground truth scores 0.
- HD95: both empty gives **0**; exactly one empty gives **373.13 mm**, the
  value the BraTS evaluation uses (the diagonal of the 240 x 240 x 155 mm
  volume).

Optional post-processing (``et_min_voxels`` > 0, label sets with an ``ET``
region): an ET prediction with fewer voxels than the threshold is relabelled
as the class of the region around it (BraTS: core), as BraTS submissions
commonly do with 500 voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch.nn import functional as F

from mckd.seg.labels import LabelScheme, convention
from mckd.errors import ConfigError
from mckd.registry import register_task
from mckd.tasks.base import Facts, Forward, MeanOfSampleMetrics, require_target

HD95_ONE_EMPTY = 373.13  # mm: BraTS's value when exactly one of prediction and ground truth is empty
BRATS = convention("brats2023")  # the BraTS classes (every BraTS convention shares them)


def target_masks(labels: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Internal labels ``[B, *S]`` -> bool targets ``[B, T, *S]`` (the scheme's regions, or its classes but background)."""
    return torch.stack([torch.isin(labels, torch.tensor(classes, device=labels.device))
                        for classes in scheme.target_classes()], dim=1)


def decode_regions(regions: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Bool regions ``[B, R, *S]`` -> internal labels ``[B, *S]``: each region writes its class, in decoding order."""
    labels = torch.zeros(regions[:, 0].shape, dtype=torch.uint8, device=regions.device)
    for index in scheme.decode_order:
        labels[regions[:, index]] = scheme.regions[index].writes
    return labels


def relabel_small_region(labels: torch.Tensor, classes: Sequence[int], into: int, min_voxels: int) -> torch.Tensor:
    """Per sample: if fewer than ``min_voxels`` voxels hold ``classes``, give them class ``into``."""
    if min_voxels <= 0:
        return labels
    labels = labels.clone()
    for b in range(labels.shape[0]):
        inside = torch.isin(labels[b], torch.tensor(list(classes), device=labels.device))
        count = int(inside.sum())
        if 0 < count < min_voxels:
            labels[b][inside] = into
    return labels


def small_et_rule(scheme: LabelScheme) -> tuple[tuple[int, ...], int] | None:
    """``(ET's classes, the class it becomes)`` for a label set with an ``ET`` region inside another, else None."""
    by_name = {r.name.upper(): r for r in scheme.regions}
    et = by_name.get("ET")
    if et is None:
        return None
    around = [r for r in scheme.regions if r is not et and set(et.classes) < set(r.classes)]
    if not around:
        return None
    parent = min(around, key=lambda r: len(r.classes))  # the smallest region around ET (BraTS: TC -> core)
    return et.classes, parent.writes


def dice_per_region(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice ``[B, T]`` of bool targets ``[B, T, *S]``; both empty -> 1."""
    from monai.metrics import compute_dice

    return compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)


def hd95_per_region(pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """95th-percentile Hausdorff distance ``[B, T]`` in mm; both empty -> 0, one empty -> 373.13."""
    import warnings

    from monai.metrics import compute_hausdorff_distance

    pred, target = pred.cpu(), target.cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty region; the convention below handles them
        hd = compute_hausdorff_distance(pred.float(), target.float(), include_background=True, percentile=95,
                                        spacing=list(spacing))
    dims = tuple(range(2, pred.dim()))
    pred_empty, target_empty = ~pred.any(dim=dims), ~target.any(dim=dims)  # (B, T)
    hd = torch.where(pred_empty & target_empty, torch.zeros_like(hd), hd)
    hd = torch.where(pred_empty ^ target_empty, torch.full_like(hd, HD95_ONE_EMPTY), hd)
    return hd


@dataclass
class SegmentationOptions:
    """Options of the ``segmentation`` task (the data's crop, spacing and labels come from the dataset)."""

    head: Literal["auto", "regions", "labels"] = "auto"  # auto: sigmoid regions when the data declare regions (BraTS ET/TC/WT, nnU-Net region-based), else softmax classes; regions: sigmoid per region, Dice+BCE (authors' code); labels: softmax, Dice+CE (paper text)
    overlap: float = 0.5  # sliding-window overlap at evaluation
    sw_batch_size: int = 2  # windows per forward pass at evaluation
    et_min_voxels: int = 0  # post-processing: an ET prediction under this many voxels (original grid) becomes core; 0 off, 500 in the BraTS literature
    output_prior: bool = False  # true (the shipped configs): the head starts at each target's share of the training voxels (log-odds), not at p = 0.5; false, and configs without the key (runs made before it): mckd 0.1's start

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


def prior_offset(head: str, scheme: LabelScheme, class_shares: Sequence[float] | None) -> torch.Tensor:
    """``[C]`` logit offset of a head starting at the targets' priors (zeros without ``class_shares``).

    ``class_shares``: each internal class's share of the training voxels
    (summing to 1). ``regions``: log-odds of each region's share (the sum of
    its classes'); ``labels``: log of each class's share. Shares are clipped
    to [1e-4, 1 - 1e-4] so a class the training cases lack stays finite.
    """
    if not class_shares:
        return torch.zeros(num_outputs(head, scheme))
    shares = torch.tensor([float(v) for v in class_shares], dtype=torch.float64)
    if shares.numel() != scheme.num_classes:
        raise ConfigError(f"the data's class shares have {shares.numel()} values, the labels {scheme.num_classes} classes")
    if resolve_head(head, scheme) == "regions":
        priors = torch.stack([shares[list(r.classes)].sum() for r in scheme.regions]).clamp(1e-4, 1 - 1e-4)
        return torch.log(priors / (1 - priors)).float()
    return torch.log(shares.clamp(1e-4, 1 - 1e-4)).float()


def resolve_head(head: str, scheme: LabelScheme) -> str:
    """``auto`` -> ``regions`` or ``labels`` by the declaration; ``regions`` without declared regions is an error."""
    if head == "auto":
        return "regions" if scheme.region_based else "labels"
    if head == "regions" and not scheme.region_based:
        raise ConfigError(f"task.head is 'regions' but the data's labels ({scheme.name}: {', '.join(scheme.classes)}) "
                          "declare no regions; use head: labels (or auto), or declare regions in a label file")
    return head


def num_outputs(head: str, scheme: LabelScheme = BRATS) -> int:
    """Output channels of a head: one per region, or one per class."""
    return len(scheme.regions) if resolve_head(head, scheme) == "regions" else scheme.num_classes


class SegmentationTask:
    """3D segmentation of a declared label set; see the module docstring for the conventions.

    Args:
        num_classes: output channels (the regions for ``regions``, the classes for ``labels``).
        head: ``"regions"`` or ``"labels"`` (``"auto"``: by the declaration).
        roi: sliding-window size ``[X, Y, Z]`` (the training crop).
        overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
        et_min_voxels: post-processing threshold on this grid (0: off).
        spacing: voxel size in mm for HD95.
        scheme: the labels (default: the BraTS classes and regions).
        class_shares: each internal class's share of the training voxels; the head then starts at the
            targets' priors (:func:`prior_offset`); None: no offset.
    """

    name = "segmentation"
    primary_metric = "dice_mean"

    def __init__(
        self,
        num_classes: int,
        head: str = "regions",
        roi: Sequence[int] = (128, 128, 128),
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        et_min_voxels: int = 0,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        scheme: LabelScheme | None = None,
        class_shares: Sequence[float] | None = None,
    ) -> None:
        from monai.losses import DiceCELoss, DiceLoss

        self.scheme = scheme or BRATS
        if head not in ("auto", "regions", "labels"):
            raise ValueError(f"head must be 'auto', 'regions' or 'labels', got {head!r}")
        head = resolve_head(head, self.scheme)
        expected = num_outputs(head, self.scheme)
        if num_classes != expected:
            raise ValueError(f"head {head!r} of {self.scheme.name} needs {expected} output channels, got {num_classes}")
        self.num_classes = num_classes
        self.num_outputs = num_classes
        self.head = head
        self.roi = tuple(int(r) for r in roi)
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.et_min_voxels = et_min_voxels
        self.small_et = small_et_rule(self.scheme)
        if et_min_voxels > 0 and self.small_et is None:
            raise ConfigError(f"task.et_min_voxels is {et_min_voxels}, but the labels ({self.scheme.name}) have no ET "
                              "region inside another; set it to 0")
        self.spacing = tuple(float(s) for s in spacing)
        self.targets = self.scheme.target_names()
        keys = self.scheme.metric_keys()
        self.metric_names = ("dice_mean", *(f"dice_{k}" for k in keys), *(f"hd95_{k}" for k in keys))
        self.higher_is_better = {name: name.startswith("dice") for name in self.metric_names}
        self.logit_offset = prior_offset(head, self.scheme, class_shares)  # (C,)
        self._dice = DiceLoss(sigmoid=True)  # regions: mean over samples and channels
        self._dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)  # labels

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output ``[B, C, *S]`` -> the head's logits: plus the prior offset per channel, float32."""
        offset = self.logit_offset.to(output.device).view(1, -1, *([1] * (output.dim() - 2)))
        return output.float() + offset

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice + (binary) cross-entropy of the network's output ``[B, C, *S]`` against labels ``[B, 1, *S]``."""
        prediction = self.logits(prediction)
        if self.head == "regions":
            regions = target_masks(target[:, 0].long(), self.scheme).float()  # (B, R, *S)
            return self._dice(prediction, regions) + F.binary_cross_entropy_with_logits(prediction, regions)
        return self._dice_ce(prediction, target.long())

    # --- from logits to labels -------------------------------------------------------------

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, *S]`` -> probabilities (sigmoid per region, or softmax over classes), float32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.head == "regions" else torch.softmax(logits, dim=1)

    def background_probabilities(self) -> torch.Tensor:
        """``[C]``: the probabilities of a voxel known to be background (outside the brain)."""
        out = torch.zeros(self.num_outputs)
        if self.head == "labels":
            out[0] = 1.0
        return out

    def labels_from_probabilities(self, probabilities: torch.Tensor, postprocess: bool = True) -> torch.Tensor:
        """Probabilities ``[B, C, *S]`` -> internal labels ``[B, *S]`` (uint8), post-processed."""
        if self.head == "regions":
            labels = decode_regions(probabilities > 0.5, self.scheme)
        else:
            labels = probabilities.argmax(dim=1).to(torch.uint8)
        return self.postprocess(labels) if postprocess else labels

    def postprocess(self, labels: torch.Tensor, et_min_voxels: int | None = None) -> torch.Tensor:
        """The small-ET rule (``et_min_voxels``, this task's unless given) on labels ``[B, *S]``."""
        threshold = self.et_min_voxels if et_min_voxels is None else et_min_voxels
        if threshold <= 0 or self.small_et is None:
            return labels
        classes, into = self.small_et
        return relabel_small_region(labels, classes, into, threshold)

    def to_labels(self, prediction: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, *S]`` -> internal labels ``[B, *S]`` (uint8), post-processed."""
        if self.head == "regions":
            labels = decode_regions(prediction > 0, self.scheme)  # sigmoid > 0.5
        else:
            labels = prediction.argmax(dim=1).to(torch.uint8)
        return self.postprocess(labels)

    # --- metrics ---------------------------------------------------------------------------

    def label_metrics(self, predicted: torch.Tensor, truth: torch.Tensor,
                      spacing: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
        """Dice and HD95 per target, ``[B]`` each, plus ``dice_mean``, of label maps ``[B, *S]`` (internal classes)."""
        pred = target_masks(predicted.long(), self.scheme)  # (B, T, *S)
        true = target_masks(truth.long(), self.scheme)
        dice = dice_per_region(pred, true).cpu()  # (B, T)
        hd = hd95_per_region(pred, true, self.spacing if spacing is None else spacing)  # (B, T)
        out = {"dice_mean": dice.mean(dim=1)}
        for k, key in enumerate(self.scheme.metric_keys()):
            out[f"dice_{key}"] = dice[:, k]
            out[f"hd95_{key}"] = hd[:, k]
        return out

    def sample_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dice and HD95 per target, ``[B]`` each, plus ``dice_mean`` (mean of the targets' Dice scores)."""
        return self.label_metrics(self.to_labels(prediction), target[:, 0])

    def accumulator(self) -> MeanOfSampleMetrics:
        """The mean over cases of the per-case Dice and HD95."""
        return MeanOfSampleMetrics(self)

    def infer(self, forward: Forward, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits ``[B, C, X, Y, Z]`` (the head's: prior offset added) for inputs ``N x [B, 1, X, Y, Z]``."""
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
        return self.logits(torch.cat(outputs, dim=0))


def scheme_from_facts(facts: Facts) -> LabelScheme:
    """The label scheme the data declared (runs of mckd 0.1 and caches of version 1: the BraTS classes)."""
    record = facts.get("labels")
    return LabelScheme.from_json(record, "the run's label scheme") if record else BRATS


@register_task("segmentation", SegmentationOptions,
               "3D segmentation of any declared labels (classes or nested regions): Dice + (B)CE, "
               "sliding-window Dice and HD95 per class or region")
def build_segmentation(options: SegmentationOptions, facts: Facts) -> SegmentationTask:
    """The task for data with ``facts`` ``roi`` (window = training crop), ``spacing``, ``downsample`` and ``labels``."""
    require_target("segmentation", facts, "label_map")
    step = int(facts.get("downsample", 1))
    scheme = scheme_from_facts(facts)
    head = resolve_head(options.head, scheme)
    return SegmentationTask(
        num_outputs(head, scheme),
        head=head,
        roi=facts["roi"],
        overlap=options.overlap,
        sw_batch_size=options.sw_batch_size,
        et_min_voxels=int(round(options.et_min_voxels / step**3)),  # the threshold is on the original grid
        spacing=facts.get("spacing", (1.0, 1.0, 1.0)),
        scheme=scheme,
        class_shares=facts.get("class_shares") if options.output_prior else None,
    )
