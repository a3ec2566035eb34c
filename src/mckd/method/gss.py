"""GSS (Qiu et al., ICCV 2023; code: qysgithubopen/GSS), as a peer of MCKD, on RFNet.

Category-aware group self-support. RFNet's shared decoder predicts the
segmentation from each modality alone; GSS makes those predictions teach
each other. For every output category, the modalities' predictions form a
group with one or more **leaders** (the modalities most sensitive to that
category: BraTS's enhancing tumour and core are seen in T1c, the whole
tumour in FLAIR and T2). Per voxel, with ``p`` the probabilities at
temperature 1 and ``s`` at temperature ``T`` (8):

- one leader: where the leader is confident (``p > TP``, 0.75) the target
  is the leader's ``s``; elsewhere, where every other modality is confident
  (``p > TM``, 0.85) it is 0; elsewhere the minimum ``s`` of all modalities;
- several leaders: where all are confident, their maximum ``s``; plus, where
  any is confident, ``max - DTP * (max - min)`` of theirs (DTP 0.3; the
  authors' code adds this over every voxel where any is confident, so where
  all are the target is the sum of both terms); elsewhere as above, with the
  non-leaders as the others.

The targets of the categories (for a sigmoid region: the region and its
complement) are normalised to sum to 1 per voxel (:func:`support_targets`).
Every modality's tempered prediction learns its group's target by a
class-weighted cross-entropy in which a random 20% of voxel draws per
sample are masked out (:func:`support_loss`). Loss after ``support_start``
of training (the authors fine-tune a trained RFNet; before that this is
RFNet's loss exactly):

    l_fused + 0.7 * l_separate + l_maps + 0.3 * T^2 / 10 * l_support.

Why GSS of the three the issue names (DeMoSeg, GSS, M3AE): it ports to any
number of modalities with nothing invented. It is a training loss on RFNet,
whose region-aware fusion already takes any N; its only dataset knowledge is
the leaders of each category, a declared option here. DeMoSeg's feature
slots are filled by a fixed 15-row table of partner modalities (T1 <-> T2,
T1c <-> FLAIR) that exists only for four; M3AE is a separate masked
pre-training stage of a four-channel early-fusion network at 128^3.

Differences from the authors' code (on RFNet's, PyTorch), beside RFNet's:

- one run: RFNet's losses for the first ``support_start`` of training, GSS's
  after (GSS.sh fine-tunes RFNet's checkpoint in rounds of 300 epochs, the
  learning-rate schedule restarting each round);
- categories are the task's output channels: with the sigmoid regions of
  mckd's BraTS head (ET, TC, WT) each is a binary category (the region and
  its complement, both led by the region's leaders); leaders default to T1c
  for ET and TC and FLAIR + T2 for WT (the authors' classes: BG FLAIR, NCR
  T1c, ED FLAIR + T2, ET T1c); the per-category losses are averaged over the
  regions (the authors sum over their four classes); with ``region_maps:
  softmax`` the categories are the classes, normalised together, as theirs;
  where the default leaders do not fit the data (another number of output
  channels, or none of a group's modalities) every modality leads every
  category (a warning says so; ``leaders`` sets them);
- a modality the sample lacks is left out of every minimum, maximum and
  "every other modality" (theirs always has four); a category with no other
  modality never meets the "every other modality" rule;
- the members' average term of the authors' single-leader rule is left out:
  their code computes it only where the leader is confident and then zeroes
  it there, so it is zero everywhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, register_training_method
from mckd.method.model import ModelSpec, MultiModalModel
from mckd.method.rfnet import RFNet, RFNetOptions, rfnet_model
from mckd.method.seg_parts import UNetPath3D

CLAMP = 0.005  # the authors' clamp of probabilities inside the log


def group_target(p: torch.Tensor, s: torch.Tensor, available: torch.Tensor, leaders: Sequence[int],
                 tp: float, tm: float, dtp: float) -> torch.Tensor:
    """The self-support target of one category, before normalisation: ``[B, *S]``.

    Args:
        p: ``[B, N, *S]`` each modality's probability of the category at temperature 1.
        s: ``[B, N, *S]`` the same at temperature T.
        available: bool ``[B, N]``: the modalities each sample has (the others are never read).
        leaders: the category's leading modalities (indices).
        tp, tm, dtp: the leader and member confidence thresholds, and the group rule's pull to the minimum.
    """
    mask = available.to(torch.bool).reshape(available.shape + (1,) * (p.dim() - 2)).expand_as(p)  # (B, N, *S)
    is_leader = torch.zeros(p.shape[1], dtype=torch.bool, device=p.device)
    is_leader[list(leaders)] = True
    lead = mask & is_leader.reshape((1, -1) + (1,) * (p.dim() - 2))
    member = mask & ~lead
    confident = p > tp
    any_lead = (lead & confident).any(dim=1)  # (B, *S)
    inf = torch.full_like(s, float("inf"))
    lead_max = torch.where(lead, s, -inf).max(dim=1).values
    lead_min = torch.where(lead, s, inf).min(dim=1).values
    # every other modality confident (and at least one other modality)
    members_sure = ((p > tm) | ~member).all(dim=1) & member.any(dim=1) & ~any_lead
    everyone_min = torch.where(mask, s, inf).min(dim=1).values
    rest = torch.where(any_lead | members_sure, torch.zeros_like(everyone_min), everyone_min)
    if len(leaders) == 1:
        return torch.where(any_lead, lead_max, torch.zeros_like(lead_max)) + rest
    all_lead = ((lead & confident) | ~lead).all(dim=1) & lead.any(dim=1)
    both = torch.where(all_lead, lead_max, torch.zeros_like(lead_max))
    either = torch.where(any_lead, lead_max - dtp * (lead_max - lead_min), torch.zeros_like(lead_max))
    return both + either + rest


def category_probabilities(logits: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """Per category ``[B, Q, *S]``: softmax classes (``Q = K``), or each sigmoid region and its complement (``Q = 2K``,
    ordered region 1, not region 1, region 2, ...)."""
    z = logits.float() / temperature
    if kind == "softmax":
        return torch.softmax(z, dim=1)
    inside = torch.sigmoid(z)
    return torch.stack([inside, 1.0 - inside], dim=2).flatten(1, 2)


def support_targets(logits: Sequence[torch.Tensor], available: torch.Tensor, leaders: Sequence[Sequence[int]],
                    kind: str, temperature: float, tp: float, tm: float, dtp: float) -> torch.Tensor:
    """The normalised targets ``[B, Q, *S]`` from every modality's logits (``N x [B, K, *S]``; detached inside).

    Softmax: one category per class, normalised over all classes; sigmoid:
    for each region its inside and outside, both led by the region's leaders,
    normalised per region.
    """
    with torch.no_grad():
        p = torch.stack([category_probabilities(z, 1.0, kind) for z in logits], dim=1)  # (B, N, Q, *S)
        s = torch.stack([category_probabilities(z, temperature, kind) for z in logits], dim=1)
        per_category = leaders if kind == "softmax" else [group for group in leaders for _ in range(2)]
        raw = torch.stack([group_target(p[:, :, q], s[:, :, q], available, group, tp, tm, dtp)
                           for q, group in enumerate(per_category)], dim=1)  # (B, Q, *S)
        if kind == "softmax":
            return raw / raw.sum(dim=1, keepdim=True).clamp(min=1e-12)
        pairs = raw.reshape(raw.shape[0], -1, 2, *raw.shape[2:])
        return (pairs / pairs.sum(dim=2, keepdim=True).clamp(min=1e-12)).flatten(1, 2)


def voxel_keep_mask(shape: Sequence[int], ratio: float, device: torch.device) -> torch.Tensor:
    """``[B, *S]`` float: 0 at ``int(V * ratio)`` voxel draws (with replacement) per sample, 1 elsewhere."""
    b, voxels = shape[0], int(torch.tensor(shape[1:]).prod())
    keep = torch.ones(b, voxels, device=device)
    draws = int(voxels * ratio)
    if draws:
        keep.scatter_(1, torch.randint(voxels, (b, draws), device=device), 0.0)
    return keep.reshape(b, *shape[1:])


def weighted_cross_entropy(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' class-weighted cross-entropy of probabilities ``[B, Q, *S]``: ``mean(-sum_q w_q t_q log s_q)``,
    ``w_q = 1 - sum(t_q) / sum(t)`` per sample, the sum over the categories given (one group)."""
    dims = tuple(range(2, target.dim()))
    weights = 1.0 - target.sum(dim=dims) / target.sum(dim=(1, *dims)).unsqueeze(1).clamp(min=1e-12)  # (B, Q)
    shape = weights.shape + (1,) * len(dims)
    return (-(weights.reshape(shape) * target * torch.log(student.clamp(CLAMP, 1.0))).sum(dim=1)).mean()


def support_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, temperature: float, mask_ratio: float) -> torch.Tensor:
    """One modality's self-support loss: its tempered prediction against the target, a random 20% of voxels masked."""
    student = category_probabilities(logits, temperature, kind)  # (B, Q, *S)
    keep = voxel_keep_mask((target.shape[0], *target.shape[2:]), mask_ratio, target.device).unsqueeze(1)
    student, target = student * keep, target * keep
    if kind == "softmax":
        return weighted_cross_entropy(student, target)
    regions = target.shape[1] // 2
    return sum(weighted_cross_entropy(student[:, 2 * k : 2 * k + 2], target[:, 2 * k : 2 * k + 2])
               for k in range(regions)) / regions


@dataclass
class GSSOptions(RFNetOptions):
    """Options of the ``gss`` method: RFNet's and the authors' self-support settings."""

    leaders: list[list[str]] = field(default_factory=lambda: [["t1ce"], ["t1ce"], ["flair", "t2"]])  # per output channel (the task's order), its leading modalities; default BraTS's ET, TC, WT (where it does not fit the data: every modality leads); names the data lack are dropped
    temperature: float = 8.0  # TEMP
    leader_threshold: float = 0.75  # TP: a leader is confident above it
    member_threshold: float = 0.85  # TM: every other modality is confident above it
    pull_to_min: float = 0.3  # DTP: several leaders, some confident: max - DTP * (max - min)
    mask_ratio: float = 0.2  # fraction of voxel draws masked out of the self-support loss
    separate_weight: float = 0.7  # weight of the shared decoder's losses once self-support starts (RFNet's 1 before)
    support_weight: float = 0.3  # the self-support loss is scaled by support_weight * T^2 / 10
    support_start: float = 0.1667  # fraction of training trained as RFNet first (RFNet's 300 epochs before GSS.sh's rounds)

    def validate(self, path: str) -> None:
        super().validate(path)
        if not self.leaders or any(not group for group in self.leaders):
            raise ConfigError(f"{path}.leaders must give at least one modality for every output channel, got {self.leaders}")
        if self.temperature <= 0 or not 0 <= self.mask_ratio < 1 or not 0 <= self.support_start <= 1:
            raise ConfigError(f"{path}: temperature must be > 0, mask_ratio in [0, 1), support_start in [0, 1]")
        if min(self.separate_weight, self.support_weight) < 0:
            raise ConfigError(f"{path}.separate_weight and {path}.support_weight must be >= 0")


@register_training_method(GSSOptions)
class GSS(RFNet):
    """GSS on RFNet: every modality's prediction learns a target its category's leaders and members agree on."""

    name = "gss"
    description = ("GSS (Qiu et al., 2023) on RFNet: per category, confident leader modalities and the others give a "
                   "target that every modality's own prediction learns (group self-support, random voxel mask)")

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        self.leader_indices = self.resolve_leaders(spec)
        fused = rfnet_model(model, spec, self.options.region_maps, self.name)
        self.parts["shared_decoder"] = UNetPath3D(spec.feature_channels, spec.num_outputs)
        return fused

    def resolve_leaders(self, spec: ModelSpec) -> list[list[int]]:
        """The leaders of every output channel as modality indices.

        Leaders the user gave must fit: one group per output channel, each with a
        modality the data have (names the data lack are dropped). The default
        (BraTS's) is used where it fits; where it does not (another number of
        outputs, none of a group's modalities), every modality leads every
        category, with a warning.
        """
        groups = self.options.leaders
        given = groups != GSSOptions().leaders
        resolved = [[spec.modalities.index(m) for m in group if m in spec.modalities] for group in groups]
        fits = len(groups) == spec.num_outputs and all(resolved)
        if fits:
            return resolved
        if given:
            if len(groups) != spec.num_outputs:
                raise ConfigError(f"method.leaders gives {len(groups)} groups; the task has {spec.num_outputs} output "
                                  "channels: give one list of leading modalities per channel")
            empty = [k for k, group in enumerate(resolved) if not group]
            raise ConfigError(f"method.leaders: output channel(s) {empty} have no leader among the data's modalities "
                              f"{list(spec.modalities)} (leaders {groups})")
        warnings.warn(f"gss: the default leaders {groups} (BraTS's ET, TC, WT) do not fit {spec.num_outputs} output "
                      f"channels of {list(spec.modalities)}; every modality leads every category (set method.leaders)",
                      stacklevel=2)
        return [list(range(len(spec.modalities))) for _ in range(spec.num_outputs)]

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "separate", "maps", "support")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        output, losses, separate_logits, available = self.rfnet_losses(model, batch, present)  # type: ignore[arg-type]
        o = self.options
        if self.progress() < o.support_start:  # RFNet's training first
            fused_weight = 0.0 if self.progress() < o.fusion_start else 1.0
            loss = fused_weight * losses["task"] + losses["separate"] + losses["maps"]
            return StepOutput(loss, {**losses, "support": torch.zeros_like(losses["task"])}, output)
        target = support_targets(separate_logits, available, self.leader_indices, o.region_maps, o.temperature,
                                 o.leader_threshold, o.member_threshold, o.pull_to_min)
        support = losses["task"].new_zeros((), dtype=torch.float32)
        for n in range(available.shape[1]):
            rows = available[:, n].nonzero(as_tuple=True)[0]
            if rows.numel():
                support = support + support_loss(separate_logits[n][rows], target[rows], o.region_maps,
                                                 o.temperature, o.mask_ratio)
        scale = o.support_weight * o.temperature ** 2 / 10
        loss = losses["task"] + o.separate_weight * losses["separate"] + losses["maps"] + scale * support
        return StepOutput(loss, {**losses, "support": support}, output)
