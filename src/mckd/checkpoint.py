"""Checkpoints that hold tensors only (safetensors), written atomically.

A checkpoint is one ``.safetensors`` file: named tensors plus string metadata
(the resolved config as YAML, the iteration). Loading never unpickles
anything, so a crafted file cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mckd.errors import CheckpointError


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save named tensors and JSON-able metadata to ``path`` atomically."""
    flat = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    meta = {"mckd": json.dumps(metadata)}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(tensors, metadata)``; a file that is not a safetensors checkpoint is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
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
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {str(path)!r} has corrupt metadata") from None
    return tensors, metadata


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """Load the tensors under ``prefix`` into ``module``; mismatches name the keys."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
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
