"""Shared building blocks of the generative MONAI bundles (referenced from bundle configs as ``common.<module>``).

Submodules load on first attribute access, so a config needs only ``$import common`` to use ``common.data``,
``common.sampling`` and the rest (MONAI's config parser binds ``import a.b`` to the name ``a.b``, not ``a``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "bundle",
    "checkpoint",
    "ct_transforms",
    "data",
    "evaluation",
    "handlers",
    "inferers",
    "intensity_rules",
    "io",
    "latent",
    "latent_data",
    "latent_engine",
    "latent_evaluation",
    "latent_sampling",
    "metrics",
    "noise",
    "paired",
    "paired_data",
    "paired_engine",
    "paired_evaluation",
    "paired_sampling",
    "perceptual",
    "phantoms",
    "sampling",
    "schedulers",
    "transforms",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
