"""Shared building blocks of the generative MONAI bundles, laid out by role as MONAI core is.

``networks`` (paired denoiser, timestep blocks, feature extractors), ``schedulers``, ``inferers`` (conditional, paired,
autoencoder, tiled decoding), ``engines`` (paired trainer/evaluator, batch preparation), ``losses``, ``transforms``,
``data`` (case discovery, headers, splits, preparation, phantoms), ``metrics``, ``workflows`` (sampling and evaluation
runs), ``handlers``, ``checkpoint``, ``io`` and ``bundle`` (where a bundle's folder is).

Submodules load on first attribute access, so a config needs only ``$import common`` to use ``common.data``,
``common.workflows`` and the rest (MONAI's config parser binds ``import a.b`` to the name ``a.b``, not ``a``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "bundle",
    "checkpoint",
    "data",
    "engines",
    "handlers",
    "inferers",
    "io",
    "losses",
    "metrics",
    "networks",
    "schedulers",
    "transforms",
    "workflows",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
