"""The scaling of a run's inputs, fitted on its training split and saved beside its checkpoint.

``RUN/scaling.safetensors`` holds, per modality, ``<modality>.offset`` and
``<modality>.scale`` (float32, each broadcastable to one sample's shape): the
model read ``(raw - offset) / scale`` in training, so new samples are scaled the
same way (:mod:`mckd.predict_table`). Tensors only, as every file mckd writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Scaling = dict[str, tuple[np.ndarray, np.ndarray]]


def write_scaling(path: Path, scaling: Scaling) -> None:
    """``scaling`` (modality -> ``(offset, scale)``) as tensors, ``<modality>.offset`` and ``<modality>.scale``."""
    from safetensors.numpy import save_file

    from mckd.io import atomic_write

    arrays = {f"{name}.{part}": np.ascontiguousarray(value, dtype=np.float32)
              for name, pair in scaling.items() for part, value in zip(("offset", "scale"), pair)}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata={"format": "1"}))


def read_scaling(path: Path) -> Scaling:
    """What :func:`write_scaling` wrote."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    names = {key.rsplit(".", 1)[0] for key in arrays}
    return {name: (arrays[f"{name}.offset"], arrays[f"{name}.scale"]) for name in names}
