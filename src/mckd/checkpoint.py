"""Checkpoints that hold tensors only (safetensors), written atomically.

A checkpoint is one ``.safetensors`` file: named tensors plus string metadata
(the resolved config as YAML, the iteration). Loading never unpickles
anything, so a crafted file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mckd.errors import CheckpointError
from mckd.io import atomic_write

# 1: model and weights; 2: the training state of mckd 0.1; 3: methods as components; 4: a method's own parts
# and every optimiser by name (format 3 still resumes: its one optimiser is the model's).
CHECKPOINT_FORMAT = 4


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save named tensors and JSON-able metadata to ``path`` atomically."""
    flat = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    meta = {"mckd": json.dumps(metadata)}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(tensors, metadata)``; a file that is not a safetensors checkpoint is refused."""
    from mckd.io import file_problem

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} {problem}")
    kind = _pickle_kind(path)
    if kind:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is {kind}, not a safetensors file; mckd refuses to load it because "
            "unpickling can run arbitrary code (mckd checkpoints are .safetensors written by mckd train)"
        )
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({error}); "
            "mckd never unpickles checkpoints"
        ) from None
    try:
        metadata = json.loads(raw_meta.get("mckd", "{}"))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {str(path)!r} has corrupt metadata") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has corrupt metadata (a {type(metadata).__name__}, expected a mapping)")
    check_checkpoint(tensors, metadata, str(path))
    return tensors, metadata


# Counters a checkpoint's metadata may hold, and their smallest value.
COUNTERS = {"iteration": 0, "world_size": 1, "format": 1}


def check_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], source: str) -> None:
    """The one checkpoint validator, before anything is built from it: finite tensors, sane counters, bounded nesting.

    Every floating-point tensor (the model's weights, the optimiser's moments,
    the importance weights) must be finite: a NaN weight predicts background
    everywhere without an error. The counters (:data:`COUNTERS`) must be whole
    numbers at or above their least value, ``complete`` a boolean, and the
    metadata no deeper than :data:`mckd.bounds.BOUNDS` ``nesting``. The tensors'
    dtypes and shapes against the model are checked as they are loaded
    (:func:`load_state_into`); the iteration against the run's length when it
    resumes (:func:`check_resume_point`).

    Raises:
        CheckpointError: naming the checkpoint, the tensor or key, and what was found.
    """
    from mckd.bounds import BOUNDS, nesting_depth

    limit = int(BOUNDS["nesting"].high())
    if nesting_depth(metadata, limit) > limit:
        raise CheckpointError(f"checkpoint {source!r} has metadata nested more than {limit} levels deep; it was not "
                              "written by mckd")
    for key, least in COUNTERS.items():
        if key in metadata:
            value = metadata[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CheckpointError(f"checkpoint {source!r} has {key} {str(value)[:40]!r}; expected a whole number "
                                      f">= {least}: it is damaged or was edited")
    if "complete" in metadata and not isinstance(metadata["complete"], bool):
        raise CheckpointError(f"checkpoint {source!r} has complete {str(metadata['complete'])[:40]!r}; expected "
                              "true or false")
    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"checkpoint {source!r} holds NaN or infinite values in {sorted(bad)[:5]}"
                              f"{' and more' if len(bad) > 5 else ''}; a model with them predicts nonsense: use an "
                              "earlier checkpoint, or train again")


def check_resume_point(iteration: int, total: int, source: str) -> None:
    """A resumed run's checkpoint must lie within the run: at most its ``total`` iterations."""
    if iteration > total:
        raise CheckpointError(f"checkpoint {source!r} is at iteration {iteration}, past the end of this run "
                              f"({total} iterations): resume with train.iterations >= {iteration} (or the epochs "
                              "that make them), or evaluate it as it is with `mckd evaluate`")


def _pickle_kind(path: Path) -> str:
    """What a pickle-based file looks like from its first bytes ("" when it does not look like one).

    Only the first bytes are read: a pickle stream starts with the PROTO opcode
    0x80, a ``torch.save`` file is a zip archive (``PK\\x03\\x04``). A
    safetensors file starts with its header's length (8 bytes, which may begin
    with 0x80) and then the JSON header's ``{``, which rules it out.
    """
    with path.open("rb") as stream:
        head = stream.read(9)
    if head[8:9] == b"{":
        return ""
    if head[:1] == b"\x80":
        return "a Python pickle"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save's pickle format)"
    return ""


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """Load the tensors under ``prefix`` into ``module``; mismatches name the keys."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    kinds = sorted(k for k in set(state) & set(expected) if _kind(state[k]) != _kind(expected[k]))
    if kinds:  # copying integer "weights" into float parameters would silently give a chance-level model
        raise CheckpointError(f"checkpoint {source!r} holds " + ", ".join(
            f"{k} as {state[k].dtype} (the model's is {expected[k].dtype})" for k in kinds[:5])
            + "; it is damaged or was not written by mckd")
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append("shape differs for " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]))
        raise CheckpointError(
            f"checkpoint {source!r} does not match this model configuration: " + "; ".join(parts)
        )
    module.load_state_dict(state)


def _kind(tensor: torch.Tensor) -> str:
    """floating, complex, bool or integer: what a tensor's dtype is, beyond its width."""
    if tensor.is_floating_point():
        return "floating"
    if tensor.is_complex():
        return "complex"
    return "bool" if tensor.dtype == torch.bool else "integer"


# --- Training state: optimiser and scheduler state dicts, RNG states -------------------------
#
# State dicts mix tensors with plain values (step counts, learning rates, the
# ``params`` index lists, betas as tuples, integer keys). They are split into
# named tensors, stored as tensors, and a JSON tree that stands in for the
# rest; ``{"__tensor__": name}`` marks where a tensor goes back.

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def flatten_state(state: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a state dict into ``(tensors named prefix.<path>, JSON-able tree)``.

    Dict keys may be strings or integers (an optimiser's per-parameter state is
    keyed by index); tuples stay tuples. Anything else that is neither a tensor
    nor a JSON scalar is an error naming its path: nothing is ever pickled.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            name = f"{prefix}.{path}" if path else prefix
            tensors[name] = obj.detach()
            return {_TENSOR: name}
        if isinstance(obj, dict):
            items = []
            for key, value in obj.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise CheckpointError(f"cannot store a state key {key!r} of type {type(key).__name__} at {prefix}.{path}")
                items.append([key, walk(value, f"{path}.{key}" if path else str(key))])
            return {_DICT: items}
        if isinstance(obj, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix}.{path} in a tensors-only checkpoint")

    return tensors, walk(state, "")


def referenced_tensors(tree: Any) -> list[str]:
    """The tensor names a tree of :func:`flatten_state` refers to, in order."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return [tree[_TENSOR]]
        children = tree.get(_TUPLE) or [value for _, value in tree.get(_DICT, [])]
        return [name for child in children for name in referenced_tensors(child)]
    if isinstance(tree, list):
        return [name for child in tree for name in referenced_tensors(child)]
    return []


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            name = tree[_TENSOR]
            if name not in tensors:
                raise CheckpointError(f"checkpoint lacks the tensor {name!r} that its metadata names")
            return tensors[name]
        if _TUPLE in tree:
            return tuple(unflatten_state(v, tensors) for v in tree[_TUPLE])
        if _DICT in tree:
            return {key: unflatten_state(value, tensors) for key, value in tree[_DICT]}
        raise CheckpointError(f"unreadable state entry {tree!r}")
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def rng_state_tensors(device: torch.device, generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """This process's random number generators as tensors of fixed shapes.

    Python's ``random``, NumPy's global generator, torch's CPU generator, the
    CUDA generator of ``device`` when it is a GPU, and any named extra
    generators (e.g. the missing-modality policy's). Fixed shapes let every
    rank's states be gathered into rank 0's checkpoint.
    """
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    out = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),  # (626,)
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # (624,)
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    for name, generator in (generators or {}).items():
        out[f"gen_{name}"] = generator.get_state()
    return out


def set_rng_state_tensors(states: dict[str, torch.Tensor], device: torch.device,
                          generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state_tensors` captured."""
    import random

    import numpy as np

    python = states["python"].tolist()
    has_gauss, gauss = states["python_gauss"].tolist()
    random.setstate((int(python[0]), tuple(int(v) for v in python[1:]), gauss if has_gauss else None))
    pos, np_has_gauss, cached = states["numpy_extra"].tolist()
    np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), cached))
    torch.set_rng_state(states["torch"].to(torch.uint8))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8), device)
    for name, generator in (generators or {}).items():
        key = f"gen_{name}"
        if key in states:
            generator.set_state(states[key].to(torch.uint8))
