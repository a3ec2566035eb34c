"""The ``python`` network: encoders and a head given from Python (:func:`mckd.api.fit`), recorded in a run's config."""

from __future__ import annotations

from dataclasses import dataclass

from mckd.errors import ConfigError
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.registry import register_network


@dataclass
class PythonNetworkOptions:
    """Options of the ``python`` network."""

    description: str = ""  # the modules' classes (written by mckd.api.fit)


@register_network("python", PythonNetworkOptions, "nn.Modules given from Python (mckd.api.fit); cannot be rebuilt from a config")
def build_python_network(options: PythonNetworkOptions, spec: NetworkSpec) -> NetworkParts:
    raise ConfigError("model.name 'python': this run's encoders and head were modules given to mckd.api.fit, which "
                      f"a config cannot rebuild ({options.description}); rebuild them in Python and load the "
                      "checkpoint's model.* tensors, or use a registered network")
