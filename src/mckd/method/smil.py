"""SMIL (Ma et al., AAAI 2021): prior-centre reconstruction, learned noise and bi-level training, as a peer of MCKD.

Three parts, as in the paper and the authors' code (mengmenm/SMIL,
``train_missing_eval_missing.py``, ``models/soundlenet5.py::SoundLenet5New``,
``models/newencoder.py::InferNetNew``, ``get_sound_mean_kmean.py``):

1. **Reconstruction from prior centres** (:class:`CentreFill`). K-means
   (K = 10) over the features of complete samples gives K centres ``c_nk`` of
   each modality ``n``; a missing ``f_n`` is their softplus-weighted mean,
   the weights predicted from what the sample has:

       a_n = A_n([mean_{i present} f_i, m])                  (K logits; m: the presence mask)
       f_n ~= sum_k softplus(a_nk) c_nk / sum_k softplus(a_nk)

2. **Feature regularisation** (:class:`FeatureNoise`): for a sample with a
   missing modality, learned softplus noise is added to the fused feature the
   decoder reads (``h <- h + softplus(mu + eps)``, ``mu = R([mean_{i present} f_i, m])``,
   ``eps ~ N(0, 1)`` in the inner step, 0 in the outer step and at test time,
   as the code's ``meta_train`` flag). Complete samples take the clean path.

3. **Bi-level (MAML-style) training** (:meth:`SMIL.training_step`), one
   optimiser step per iteration on

       l_in(theta)   = CE on the training batch (what each sample keeps; noise sampled)
       theta'        = theta - eta * grad_theta l_in     (second order, create_graph, as the code)
       l_out(theta') = CE(D(h_noised), y) + 0.01 * MSE(h_clean, h_noised)   on a batch of complete samples
       minimise l_in(theta) + l_out(theta')  over theta and the reconstruction and noise networks

   where ``h_noised`` is the fused feature of the complete batch with the
   missing-prone modalities hidden (reconstructed, noise not sampled) and
   ``h_clean`` the same samples with every modality. The reconstruction and
   noise networks are the meta-parameters: the inner step does not move
   them (the code's ``params_star`` holds the classifier's parameters only).

Generalised to N modalities and any classification data mckd reads:

- every modality has its own centres and weight predictor (the code: the
  sound only), the predictor reads the mean of the present features and the
  presence mask (with two modalities, the other modality's feature);
- the complete batch comes from the training split's complete samples
  (:attr:`MethodServices.complete_batch`; AV-MNIST: the r% with audio, the
  code's 150 ``mval`` samples); in its noised pass each complete sample hides
  what a random incomplete sample of the same training batch lacks (the
  patterns the model meets; AV-MNIST: the audio, as the code);
- the centres are recomputed every ``cluster_every`` iterations by K-means
  (scikit-learn, warm-started from the previous centres so cluster ``k``
  keeps its meaning) over a bank of the last ``bank_size`` complete samples'
  features (those of the clean pass). The code trains a complete-data model
  first, clusters its features once and then fine-tunes with the sound
  encoder nearly frozen; mckd trains in one run from scratch, so the centres
  follow the encoders instead (zero until the first clustering, at iteration 1);
- the centre fill replaces ``model.fill`` at every encoder level; the
  network's fusion and decoder are kept. Made for classification networks
  (vector features): the bank holds ``bank_size x N x prod(F_l)`` numbers per
  level, which spatial feature maps make large.

Differences from the authors' code, besides the above: one run, no
pre-trained full-modality model; the noise is added once, to the fused
decoder input (the code also adds it after the first FC layer, inside the
decoder, which a generic network does not expose); its mean is predicted
from the present features at the fusion level; the outer feature loss
compares the fused features only (the code also compares that hidden FC
layer, each with weight 0.01); one Adam optimiser for everything (the code:
two Adams with the same settings); the inner step size is the model's
current learning rate (the code: 1e-3 x 0.1 every 1,000 iterations). Like
the code, the outer loss does not include the clean pass's CE.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.autoencoder import generator_input
from mckd.method.base import Batch, StepOutput, TrainingMethod, register_training_method
from mckd.method.fusion import Fill, Fusion
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, *S] -> [B, C]``: the mean over positions (a vector feature is returned as it is)."""
    return x.flatten(start_dim=2).mean(dim=-1) if x.dim() > 2 else x


def centre_mixture(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``sum_k softplus(a_k) c_k / sum_k softplus(a_k)``: logits ``[B, K]``, centres ``[K, *F]`` -> ``[B, *F]``."""
    weights = F.softplus(logits)  # (B, K), > 0
    mixed = weights @ centres.flatten(start_dim=1).to(weights.dtype)  # (B, D)
    mixed = mixed / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return mixed.reshape((logits.shape[0],) + tuple(centres.shape[1:]))


class CentreFill(Fill):
    """A missing modality's feature is a softplus-weighted mean of its K prior centres (SMIL's reconstruction).

    Args:
        num_modalities: N.
        feature_shapes: ``(C_l, *S_l)`` of every encoder level.
        clusters: K.

    Buffers ``centres_<l>`` ``[N, K, *F_l]`` (zero until :meth:`set_centres`) travel with the model.
    """

    description = "a missing modality's feature is a softplus-weighted mean of K-means centres (SMIL)"

    def __init__(self, num_modalities: int, feature_shapes: Sequence[Sequence[int]], clusters: int) -> None:
        super().__init__(num_modalities, [shape[0] for shape in feature_shapes])
        self.clusters = clusters
        self.predictors = nn.ModuleList(
            nn.ModuleList(nn.Linear(shape[0] + num_modalities, clusters) for _ in range(num_modalities))
            for shape in feature_shapes)
        for level, shape in enumerate(feature_shapes):
            self.register_buffer(f"centres_{level}", torch.zeros((num_modalities, clusters) + tuple(shape)))

    def centres(self, level: int) -> torch.Tensor:
        """``[N, K, *F_l]``."""
        return getattr(self, f"centres_{level}")

    @torch.no_grad()
    def set_centres(self, level: int, centres: torch.Tensor) -> None:
        self.centres(level).copy_(centres)

    def weight_logits(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        """``a``: ``[B, N, K]``, each modality's centre logits from the present features (``[B, N, *F]``)."""
        source = _pooled(generator_input(features, present.to(torch.bool)))  # (B, C + N)
        return torch.stack([predict(source) for predict in self.predictors[level]], dim=1)  # (B, N, K)

    def forward(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        present = present.to(torch.bool)
        logits = self.weight_logits(features, present, level)  # (B, N, K)
        centres = self.centres(level)
        guesses = torch.stack([centre_mixture(logits[:, n], centres[n]) for n in range(present.shape[1])], dim=1)
        keep = present.reshape(present.shape + (1,) * (features.dim() - 2))
        return torch.where(keep, features, guesses.to(features.dtype))  # (B, N, *F)


class FeatureNoise(nn.Module):
    """SMIL's feature regularisation: ``h + softplus(mu + eps)`` for samples with a missing modality.

    ``mu = R_l([mean of the present features, m])`` (a linear map to the fused
    channels, the same at every position); ``eps ~ N(0, 1)`` when sampling.

    Args:
        num_modalities: N.
        channels: ``C_l`` of every encoder level (the features ``R`` reads).
        fused_channels: channels of every level's fused tensor (what the decoder reads).
    """

    def __init__(self, num_modalities: int, channels: Sequence[int], fused_channels: Sequence[int]) -> None:
        super().__init__()
        self.means = nn.ModuleList(nn.Linear(c + num_modalities, f) for c, f in zip(channels, fused_channels))

    def forward(self, fused: torch.Tensor, features: torch.Tensor, present: torch.Tensor, level: int,
                sample: bool) -> torch.Tensor:
        """``fused`` ``[B, C_f, *S]``, ``features`` ``[B, N, *F]`` (zero where missing) -> ``[B, C_f, *S]``."""
        present = present.to(torch.bool)
        mean = self.means[level](_pooled(generator_input(features, present)))  # (B, C_f)
        if sample:
            mean = mean + torch.randn_like(mean)
        noise = F.softplus(mean).reshape(mean.shape + (1,) * (fused.dim() - 2)).to(fused.dtype)
        incomplete = (~present.all(dim=1)).reshape((-1,) + (1,) * (fused.dim() - 1))  # (B, 1, ...)
        return torch.where(incomplete, fused + noise, fused)


class SMILModel(MultiModalModel):
    """The network's encoders, fusion and decoder, with SMIL's centre fill and feature noise.

    ``forward(inputs, present, feature_scale=None, sample_noise=None)``: noise
    is sampled when ``sample_noise`` (default: in training mode). The output's
    ``extras["fused"]`` is the decoder's input at the distillation level.
    """

    def __init__(self, modalities: Sequence[str], encoder: nn.Module | Mapping[str, nn.Module], decoder: nn.Module,
                 fill: CentreFill, fusion: Fusion, noise: FeatureNoise | None, distill_level: int,
                 feature_channels: Sequence[int]) -> None:
        super().__init__(modalities, encoder, decoder, fill=fill, fusion=fusion, distill_level=distill_level,
                         feature_channels=feature_channels)
        self.noise = noise
        self.fill = "smil"

    def forward(self, inputs: Sequence[torch.Tensor], present: torch.Tensor, feature_scale: torch.Tensor | None = None,
                sample_noise: bool | None = None) -> ModelOutput:
        present = present.to(torch.bool)
        sample = self.training if sample_noise is None else sample_noise
        levels = self.encode(inputs, present)
        fused = self.fuse(levels, present, feature_scale)
        if self.noise is not None:
            fused = [self.noise(h, levels[l], present, l, sample) for l, h in enumerate(fused)]
        return ModelOutput(prediction=self.decode(fused), features=levels[self.distill_level], levels=levels,
                           extras={"fused": fused[self.distill_level]})


def smil_model(model: MultiModalModel, spec: ModelSpec, clusters: int, noise: bool = True) -> SMILModel:
    """SMIL over the network a builder made: its encoders, fusion and decoder, a :class:`CentreFill` and noise."""
    if isinstance(model, SMILModel):
        return model
    n = len(spec.modalities)
    channels = spec.feature_channels
    fused = [type(model.fusion_module).output_channels(n, c) for c in channels]
    encoder = model.shared_encoder if model.shared_encoder is not None else {m: model.encoders[m] for m in model.modalities}
    return SMILModel(model.modalities, encoder, model.decoder, CentreFill(n, spec.feature_shapes, clusters),
                     model.fusion_module, FeatureNoise(n, channels, fused) if noise else None, model.distill_level,
                     channels)


def hidden_like_incomplete(present: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """What each of ``count`` complete samples keeps in SMIL's noised pass: bool ``[count, N]``.

    Each copies the pattern of a random incomplete sample of ``present`` (bool
    ``[B, N]``, the training batch as the missing policy left it); with none,
    every modality is kept (the noised pass is then the clean one).
    """
    incomplete = present[~present.all(dim=1)]  # (I, N)
    if incomplete.shape[0] == 0:
        return torch.ones(count, present.shape[1], dtype=torch.bool, device=present.device)
    rows = torch.randint(incomplete.shape[0], (count,), generator=generator, device=present.device)
    return incomplete[rows]


def kmeans_centres(points: torch.Tensor, clusters: int, start: torch.Tensor | None, seed: int) -> torch.Tensor:
    """K-means centres ``[K, D]`` of ``points`` ``[M, D]`` (scikit-learn; from ``start`` ``[K, D]``, else k-means++)."""
    from sklearn.cluster import KMeans

    data = points.detach().double().cpu().numpy()
    init: Any = "k-means++" if start is None else start.detach().double().cpu().numpy()
    with warnings.catch_warnings():  # fewer distinct points than K early on: some centres repeat
        warnings.simplefilter("ignore")
        fitted = KMeans(n_clusters=clusters, init=init, n_init=1, random_state=seed).fit(data)
    return torch.from_numpy(fitted.cluster_centers_).to(points.dtype)


def every_rank(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process of a torch.distributed group, concatenated in rank order (itself without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


@dataclass
class SMILOptions:
    """Options of the ``smil`` method."""

    clusters: int = 10  # K, the prior centres per modality (SMIL's)
    feature_weight: float = 0.01  # weight of the outer MSE between clean and reconstructed fused features (SMIL's)
    inner_lr: float = 0.0  # step size of the inner (MAML) step; 0: the model's current learning rate (SMIL: 1e-3)
    first_order: bool = False  # true: no second-order term through the inner step (SMIL's code is second order)
    noise: bool = True  # SMIL's learned softplus noise on the fused feature of incomplete samples
    cluster_every: int = 20  # iterations between K-means updates of the centres
    bank_size: int = 256  # complete samples whose features the K-means sees (the most recent)

    def validate(self, path: str) -> None:
        if self.clusters < 1 or self.cluster_every < 1 or self.bank_size < self.clusters:
            raise ConfigError(f"{path}: clusters and cluster_every must be >= 1 and bank_size >= clusters; got "
                              f"{self.clusters}, {self.cluster_every}, {self.bank_size}")
        if self.feature_weight < 0 or self.inner_lr < 0:
            raise ConfigError(f"{path}.feature_weight and {path}.inner_lr must be >= 0, got {self.feature_weight}, "
                              f"{self.inner_lr}")


@register_training_method(SMILOptions)
class SMIL(TrainingMethod):
    """Prior-centre reconstruction, learned feature noise and MAML-style training (Ma et al., AAAI 2021)."""

    name = "smil"
    description = ("SMIL (Ma et al., 2021): a missing feature as a softplus-weighted mean of K-means centres, learned "
                   "noise on the fused feature, bi-level training between incomplete and complete batches")
    uses_complete_batches = True

    def __init__(self, options: SMILOptions, modalities: Sequence[str], seed: int) -> None:
        super().__init__(options, modalities, seed)
        self.bank: list[torch.Tensor] = []  # per level: [bank_size, N, *F_l], complete samples' features
        self.banked = 0  # samples ever added (the bank is a ring)
        self.clustered = False
        self._fill: CentreFill | None = None
        self._clean: list[torch.Tensor] = []  # this iteration's clean features, banked in on_batch_end

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        wrapped = smil_model(model, spec, self.options.clusters, self.options.noise)
        self._fill = wrapped.fill_module  # type: ignore[assignment]
        self.bank = [torch.zeros((self.options.bank_size, len(spec.modalities)) + tuple(shape))
                     for shape in spec.feature_shapes]
        return wrapped

    def to(self, device: torch.device) -> "SMIL":
        self.bank = [bank.to(device) for bank in self.bank]
        return self

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "outer", "feature")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """``l_in(theta) + l_out(theta')`` with ``theta' = theta - eta * grad l_in`` (see the module's docstring)."""
        assert self.services is not None and self.services.complete_batch is not None, "setup() first"
        options, task_loss = self.options, self.services.task_loss
        complete = self.services.complete_batch()
        sample = options.noise and model.training
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        inner_names = [name for name in params if not name.startswith(("fill_module.", "noise."))]

        output = model(batch["inputs"], present, sample_noise=sample)
        inner = task_loss(output.prediction, batch["target"])
        grads = torch.autograd.grad(inner, [params[name] for name in inner_names], allow_unused=True,
                                    create_graph=not options.first_order, retain_graph=True)
        eta = options.inner_lr or self._model_lr()
        adapted = dict(params)
        for name, grad in zip(inner_names, grads):
            if grad is not None:  # None: not used by this batch (an encoder whose modality no sample has)
                adapted[name] = params[name] - eta * (grad.detach() if options.first_order else grad)

        everything = torch.ones_like(complete["present"], dtype=torch.bool)
        hidden = hidden_like_incomplete(present, everything.shape[0])
        noised = functional_call(model, adapted, (complete["inputs"], hidden), {"sample_noise": False})
        clean = functional_call(model, adapted, (complete["inputs"], everything), {"sample_noise": False})
        outer = task_loss(noised.prediction, complete["target"])
        dtype = torch.promote_types(noised.extras["fused"].dtype, torch.float32)
        feature = F.mse_loss(noised.extras["fused"].to(dtype), clean.extras["fused"].to(dtype))
        self._clean = [level.detach() for level in clean.levels]
        loss = inner + outer + options.feature_weight * feature
        return StepOutput(loss, {"task": inner, "outer": outer, "feature": feature}, output)

    def _model_lr(self) -> float:
        optimizer = self.services.model_optimizer if self.services is not None else None
        if optimizer is None:
            raise ValueError("smil: method.inner_lr is 0 (the model's learning rate) but no model optimiser was lent")
        return float(optimizer.param_groups[0]["lr"])

    def on_batch_end(self, iteration: int, batch: Batch, present: torch.Tensor, step: StepOutput) -> None:
        """Bank the complete batch's clean features; K-means when first possible and every ``cluster_every``.

        Under torchrun every rank banks every rank's features (in rank order), so
        the banks, the centres and a checkpoint's bank are the same on every rank.
        """
        self.add_to_bank([every_rank(level) for level in self._clean])
        due = iteration % self.options.cluster_every == 0 or not self.clustered
        if due and min(self.banked, self.options.bank_size) >= self.options.clusters:
            self.update_centres(iteration)

    @torch.no_grad()
    def add_to_bank(self, levels: Sequence[torch.Tensor]) -> None:
        """Write ``[P, N, *F_l]`` per level into the ring of the last ``bank_size`` complete samples."""
        size = self.options.bank_size
        levels = [level[-size:] for level in levels]  # a batch larger than the bank: its last samples
        for bank, level in zip(self.bank, levels):
            rows = (self.banked + torch.arange(level.shape[0], device=bank.device)) % size
            bank[rows] = level.to(bank.device, bank.dtype)
        self.banked += levels[0].shape[0] if levels else 0

    @torch.no_grad()
    def update_centres(self, iteration: int) -> None:
        """K-means of every modality's banked features, warm-started from the current centres."""
        assert self._fill is not None, "wrap_model() first"
        count = min(self.banked, self.options.bank_size)
        for level, bank in enumerate(self.bank):
            current = self._fill.centres(level)  # (N, K, *F)
            points = bank[:count]
            for n in range(bank.shape[1]):
                start = current[n].flatten(start_dim=1) if self.clustered else None
                centres = kmeans_centres(points[:, n].flatten(start_dim=1), self.options.clusters, start,
                                         self.seed + iteration)
                current[n].copy_(centres.reshape(current[n].shape).to(current.device))
        self.clustered = True

    def state_dict(self) -> dict[str, Any]:
        return {"bank": list(self.bank), "banked": self.banked, "clustered": self.clustered}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for bank, saved in zip(self.bank, state["bank"]):
            bank.copy_(saved)
        self.banked, self.clustered = int(state["banked"]), bool(state["clustered"])
