"""Modules given from Python (:func:`mckd.api.fit`), checked before training: one error naming the module at fault.

A user's encoders and head are arbitrary ``nn.Module`` s. Wrong ones used to
fail deep inside torch (``mat1 and mat2 shapes cannot be multiplied``) or,
worse, not at all: a head with five outputs for three classes trains and
evaluates without a word. :func:`check_modules` checks their types;
:func:`probe_encoders` runs each encoder alone on two training samples before
the model is assembled, and :func:`probe_model` the assembled model, so a
failure names the modality or the head, the shape it was given and torch's
reason.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mckd.errors import ConfigError


def check_modules(encoders: Mapping[str, Any] | Any, head: Any, modalities: tuple[str, ...]) -> None:
    """``encoders`` (one module per modality, or one shared) and ``head`` must be ``nn.Module`` s."""
    if not isinstance(head, nn.Module):
        raise ConfigError(f"fit(head=...) must be a torch.nn.Module, got {type(head).__name__}; wrap a function in "
                          "a module (its parameters are what training updates)")
    if isinstance(encoders, Mapping):
        if set(encoders) != set(modalities):
            raise ConfigError(f"fit(encoders=...) names {sorted(map(str, encoders))}; expected one encoder for each "
                              f"modality of the data: {list(modalities)}")
        for name, module in encoders.items():
            if not isinstance(module, nn.Module):
                raise ConfigError(f"fit(encoders=...): the encoder of {name!r} must be a torch.nn.Module, got "
                                  f"{type(module).__name__}")
    elif not isinstance(encoders, nn.Module):
        raise ConfigError(f"fit(encoders=...) must be one torch.nn.Module per modality ({', '.join(modalities)}) or "
                          f"one shared module, got {type(encoders).__name__}")


def _two_samples(dataset: Any) -> dict[str, Any]:
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in range(min(2, len(dataset)))])


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def probe_encoders(encoders: Mapping[str, nn.Module] | nn.Module, bundle: Any) -> None:
    """Run each modality's encoder (or the shared one) on two of its training samples, before a model is assembled.

    Raises:
        ConfigError: naming the modality, its input shape and torch's reason.
    """
    batch = _two_samples(bundle.train)
    for n, name in enumerate(bundle.modalities):
        encoder = encoders[name] if isinstance(encoders, Mapping) else encoders
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                encoder(batch["inputs"][n].float())
        except Exception as error:  # noqa: BLE001 - any failure of user code, named
            raise ConfigError(f"fit(encoders=...): the encoder of {name!r} fails on its input of shape "
                              f"{tuple(batch['inputs'][n].shape)} ([batch, *{tuple(bundle.input_shapes[name])}]): "
                              f"{type(error).__name__}: {_reason(error)}") from None
        finally:
            encoder.train(was_training)


def probe_model(model: nn.Module, bundle: Any, num_outputs: int) -> None:
    """Run the assembled ``model`` (a :class:`~mckd.method.model.MultiModalModel`) once on two training samples.

    Every encoder together first (features of different shapes are named),
    then the whole model with every modality present (an error names the
    head); the output must be ``[2, num_outputs]`` (the task's classes).

    Raises:
        ConfigError: naming the module at fault, the shapes, and torch's reason.
    """
    batch = _two_samples(bundle.train)
    inputs = [t.float() for t in batch["inputs"]]
    present = torch.ones(len(inputs[0]), len(inputs), dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "encode"):
                try:
                    model.encode(inputs, present)
                except Exception as error:  # noqa: BLE001
                    raise ConfigError(f"fit(encoders=...): {type(error).__name__}: {_reason(error)}") from None
            try:
                output = model(inputs, present)
            except Exception as error:  # noqa: BLE001
                raise ConfigError(f"fit(head=...): the model fails on fused features of {len(inputs)} modalities "
                                  f"({type(error).__name__}: {_reason(error)}); the head takes what fusion gives "
                                  "(concat: the modalities' features side by side)") from None
    finally:
        model.train(was_training)
    logits = getattr(output, "prediction", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[1] != num_outputs:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"fit(head=...) returns {shape} for a batch of {len(inputs[0])}; expected "
                          f"[batch, {num_outputs}], one output per class of the data")
