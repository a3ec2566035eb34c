"""The interface of a training method (a trainer variant), and the registry that names them.

A *training method* (MCKD, LCKD, ShaSpec, a GAN, ...) is everything that
differs between methods around one shared training loop (:mod:`mckd.train`),
like an nnU-Net trainer class chosen by name or a Lightning module. In one
file, a method can

- add loss terms to the inner objective (:meth:`TrainingMethod.loss_terms`,
  which sees the forward pass and the batch): the default
  :meth:`TrainingMethod.training_step` minimises ``l_task + sum_k weight_k * term_k``
  and logs every term;
- own modules (:attr:`TrainingMethod.parts`, an ``nn.ModuleDict``: a
  discriminator, reconstruction decoders, a teacher), which the loop moves to
  the device, wraps for DDP with the model, checkpoints (tensors only) and
  restores exactly on resume;
- return its own optimisers (:meth:`TrainingMethod.configure_optimizers`):
  each an :class:`Optimization` with its parameters, schedule, step
  frequency and the method's function that computes its loss;
- replace the whole step (:meth:`TrainingMethod.training_step`, which sees the
  whole batch and returns the loss and what to log);
- change the model the network builder made (:meth:`TrainingMethod.wrap_model`,
  told the network's :class:`~mckd.method.model.ModelSpec`: ShaSpec adds
  shared encoders, a learned fill or fusion is a module set there);
- take a meta step every so many iterations (:meth:`TrainingMethod.meta_due`,
  :meth:`TrainingMethod.meta_step`; MCKD's step on the importance weights);
- draw batches of complete training samples beside the training batch
  (:attr:`TrainingMethod.uses_complete_batches`, :attr:`MethodServices.complete_batch`;
  SMIL's outer objective, Full2miss's teacher);
- act on hooks (:meth:`TrainingMethod.on_batch_end` with the batch and the
  step's output, :meth:`TrainingMethod.after_iteration`; LCKD's election);
- save and restore plain state (:meth:`TrainingMethod.state_dict`).

The loop lends a method what it may need through :class:`MethodServices`
(the task loss, a way to score each modality alone on the meta-validation
split, a metrics record); a method never sees files or datasets.

Each method is registered with :func:`register_training_method` under the
name a config's ``method.name`` picks, with an options dataclass whose fields
are the ``method:`` section's keys. *Presets* (:func:`register_preset`) are
names for a method plus fixed settings, possibly of other sections (the
``baseline`` is MCKD without distillation or meta step; ``hemis`` also sets
``model.fusion``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from mckd.errors import MckdError
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = Mapping[str, Any]  # "inputs": N tensors [B, *X_n], "present": bool [B, N], "target": [B, ...]


class Term(NamedTuple):
    """One term of the inner objective: it adds ``weight * value`` to the loss; ``value`` is logged."""

    weight: float
    value: torch.Tensor


def combine(task_loss: torch.Tensor, terms: Mapping[str, Term]) -> torch.Tensor:
    """The inner objective: ``task_loss + (sum_k weight_k * value_k)`` (the terms summed first, in order)."""
    extra: torch.Tensor | None = None
    for term in terms.values():
        weighted = term.weight * term.value
        extra = weighted if extra is None else extra + weighted
    return task_loss if extra is None else task_loss + extra


@dataclass
class StepOutput:
    """What one of a method's step functions returns.

    Attributes:
        loss: the scalar its optimiser minimises (the loop calls ``backward`` on it).
        logged: values to log by name (each a scalar; the loop detaches them), e.g.
            ``{"task": l_task, "ckd": l_ckd}``; every name must be in :meth:`TrainingMethod.loss_names`.
        output: the forward pass, if the step made one (for :meth:`TrainingMethod.on_batch_end`).
    """

    loss: torch.Tensor
    logged: dict[str, torch.Tensor]
    output: ModelOutput | None = None


@dataclass
class Optimization:
    """One optimiser of a method, stepped on its own loss.

    Attributes:
        name: names it in the checkpoint (``model`` for the default one).
        optimizer: over the parameters it steps (the model's, or a part's of :attr:`TrainingMethod.parts`).
        schedule: learning-rate multiplier after ``k`` steps of this optimiser (``torch``'s ``LambdaLR``);
            None keeps the rate constant.
        every: stepped on the iterations divisible by ``every`` (1-based; 1: every iteration).
        step: the name of the method's function ``(model, batch, present) -> StepOutput`` that computes the loss.
    """

    name: str
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float] | None = None
    every: int = 1
    step: str = "training_step"


@dataclass
class MethodServices:
    """What the training loop lends a method.

    Attributes:
        task_loss: ``loss(prediction, target) -> scalar``.
        score_each_modality: the task's primary metric of each modality alone
            on the meta-validation split, in the modalities' order (LCKD).
        higher_is_better: whether a higher primary metric is better.
        record: writes one record to the run's metrics log.
        model_optimizer: the model's optimiser (the bi-level look-ahead can
            precondition its step like it).
        complete_batch: the next batch of the training split's *complete* samples (every
            modality present), on the model's device, from a resumable stream of its own;
            only for a method with :attr:`TrainingMethod.uses_complete_batches` (SMIL's
            outer objective, Full2miss's full-modality teacher), None otherwise.
        total_iterations: the run's number of training iterations (0 when unknown), for a method whose
            losses change part-way through training (RFNet's fusion loss, GSS's self-support start).
    """

    task_loss: LossFn
    score_each_modality: Callable[[], list[float]] = field(default=lambda: [])
    higher_is_better: bool = True
    record: Callable[[dict[str, Any]], None] = field(default=lambda entry: None)
    model_optimizer: torch.optim.Optimizer | None = None
    complete_batch: Callable[[], Batch] | None = None
    total_iterations: int = 0


class TrainingMethod:
    """The base class: the no-distillation method (task loss only, no meta step, one optimiser).

    Args:
        options: the method's options dataclass (the ``method:`` section).
        modalities: the modality names, in the model's order.
        seed: the run's seed (a method draws its random start from its own generator).

    Attributes:
        parts: the method's own modules (an ``nn.ModuleDict``, empty by default), made in
            :meth:`wrap_model`; trained with the model, saved as ``parts.<name>.*`` in the
            training checkpoint. Parts that the model needs at test time belong in the model
            (a learned fill or fusion), which is rebuilt by :meth:`wrap_model` when a run is loaded.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    supports_lookahead: ClassVar[bool] = False  # loss_terms can take in-graph weights (the bi-level step)
    uses_complete_batches: ClassVar[bool] = False  # draws batches of complete training samples (services.complete_batch)

    def __init__(self, options: Any, modalities: Sequence[str], seed: int) -> None:
        self.options = options
        self.modalities = tuple(modalities)
        self.seed = seed
        self.services: MethodServices | None = None
        self.parts = nn.ModuleDict()

    # --- building --------------------------------------------------------------------------------

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        """The model this method trains, from the one the network builder made (default: unchanged).

        Called when a run is built and when a trained run is loaded, with the
        network's :class:`~mckd.method.model.ModelSpec` (feature shapes per
        level, the task's output channels). Make :attr:`parts` here too.
        """
        return model

    def configure_optimizers(self, model: MultiModalModel,
                             default: Callable[[Iterable[torch.nn.Parameter]], Optimization]) -> list[Optimization]:
        """The optimisers of training, in the order they step in an iteration.

        ``default(params)`` is the optimiser of the config's ``train:`` section
        (``optimizer``, ``lr``, ``weight_decay``, ..., and its ``schedule``) over
        ``params``, named ``model``. The default: ``[default(model.parameters())]``.
        The first optimiser's learning rate is the one logged and lent to the meta step.
        """
        return [default(model.parameters())]

    def to(self, device: torch.device) -> "TrainingMethod":
        """Move the method's own tensors (importance weights) to ``device``; the loop moves :attr:`parts`."""
        return self

    def setup(self, services: MethodServices) -> None:
        """Called once before the first iteration (after a checkpoint's state is restored)."""
        self.services = services

    # --- the inner step ------------------------------------------------------------------------

    def loss_term_names(self) -> tuple[str, ...]:
        """The names :meth:`loss_terms` returns, in order (the metrics log sizes its sums by them)."""
        return ()

    def loss_names(self) -> tuple[str, ...]:
        """Every name the step functions log, in order (default: ``task`` and :meth:`loss_term_names`)."""
        return ("task", *self.loss_term_names())

    def loss_terms(self, output: ModelOutput, present: torch.Tensor,
                   weights: torch.Tensor | None = None, batch: Batch | None = None) -> dict[str, Term]:
        """The terms added to the task loss of a training batch.

        Args:
            output: the model's forward pass on the batch (``features`` ``[B, N, *F]``).
            present: bool ``[B, N]``, the modalities the batch kept.
            weights: only from the bi-level look-ahead: normalised importance
                weights ``[N]`` kept in the graph (``supports_lookahead``).
            batch: the whole batch (``inputs``, ``target``), e.g. for a reconstruction term.
        """
        return {}

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """One forward pass and the inner objective (Eq. 4 inner): ``l_task + sum_k weight_k * term_k``.

        Args:
            model: the model (called through DDP's wrapper under torchrun).
            batch: ``inputs`` (N tensors ``[B, *X_n]``), ``present`` (what the data has), ``target``.
            present: bool ``[B, N]``, what each sample keeps in this iteration (the data's and the missing policy's).
        """
        assert self.services is not None, "setup() first"
        output = model(batch["inputs"], present)
        task_loss = self.services.task_loss(output.prediction, batch["target"])
        # float32 inside, even under autocast; a method written before loss_terms took the batch gets none
        terms = self.loss_terms(output, present, batch=batch) if _takes_batch(type(self)) else self.loss_terms(output, present)
        odd = [name for name, term in terms.items() if not isinstance(term, Term)]
        if odd:
            raise MckdError(f"method {self.name!r}: loss_terms returned {odd} as other than Term(weight, value)")
        logged = {"task": task_loss, **{name: term.value for name, term in terms.items()}}
        return StepOutput(combine(task_loss, terms), logged, output)

    def on_batch_end(self, iteration: int, batch: Batch, present: torch.Tensor, step: StepOutput) -> None:
        """Called after the optimisers of an iteration stepped, with the first step's output (1-based ``iteration``)."""

    # --- the meta step ---------------------------------------------------------------------------

    meta_batches: int = 1

    @property
    def takes_meta_steps(self) -> bool:
        """Whether this method steps on meta-validation batches (which must then hold complete samples)."""
        return False

    def meta_due(self, iteration: int) -> bool:
        """Whether a meta step follows inner iteration ``iteration`` (1-based)."""
        return False

    def meta_step(self, model: MultiModalModel, val: Batch, train: Batch, train_present: torch.Tensor,
                  model_lr: float) -> torch.Tensor:
        """One meta step on a meta-validation batch ``val`` (``train``: the last training batch)."""
        raise NotImplementedError(f"method {self.name!r} takes no meta step")

    def meta_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers of the meta step, whose gradients must be averaged over processes."""
        return []

    def importance(self) -> torch.Tensor | None:
        """Normalised importance of each modality ``[N]``, logged after each meta step (None: no weights)."""
        return None

    def after_iteration(self, iteration: int) -> None:
        """Called after every inner iteration and its meta step (``iteration`` is 1-based)."""

    # --- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values that let a resumed run continue exactly (:attr:`parts` are saved apart)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; unknown or missing keys are a ``KeyError`` naming them."""
        expected, found = set(self.state_dict()), set(state)
        if expected != found:
            raise KeyError(f"method {self.name!r} state has keys {sorted(found)}, expected {sorted(expected)}")


@functools.lru_cache(maxsize=None)
def _takes_batch(cls: type) -> bool:
    """Whether ``cls.loss_terms`` accepts ``batch=`` (or ``**kwargs``)."""
    parameters = inspect.signature(cls.loss_terms).parameters.values()
    return any(p.name == "batch" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# --- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named method plus fixed settings: ``overrides`` are dotted keys, possibly of other sections."""

    name: str
    method: str
    overrides: tuple[tuple[str, Any], ...]
    description: str


TRAINING_METHODS: dict[str, type[TrainingMethod]] = {}
OPTIONS: dict[str, type] = {}
PRESETS: dict[str, Preset] = {}


def register_training_method(options: type) -> Callable[[type[TrainingMethod]], type[TrainingMethod]]:
    """Class decorator: register a :class:`TrainingMethod` subclass under its ``name`` with ``options``."""

    def decorate(cls: type[TrainingMethod]) -> type[TrainingMethod]:
        if not cls.name or cls.name in TRAINING_METHODS or cls.name in PRESETS:
            raise ValueError(f"training method name {cls.name!r} is empty or registered twice")
        TRAINING_METHODS[cls.name] = cls
        OPTIONS[cls.name] = options
        return cls

    return decorate


def register_preset(name: str, method: str, overrides: Mapping[str, Any], description: str) -> Preset:
    """Register a preset: ``method`` with ``overrides`` (``{"method.alpha": 0, "model.fusion": "hemis"}``)."""
    if name in TRAINING_METHODS or name in PRESETS:
        raise ValueError(f"preset name {name!r} is registered twice")
    preset = Preset(name, method, tuple(overrides.items()), description)
    PRESETS[name] = preset
    return preset
