"""Export a bundle's trained denoiser to TorchScript (trace) or ``torch.export`` for deployment (e.g. MONAI Deploy).

``monai.bundle ckpt_export`` feeds a single input, but a diffusion denoiser takes two, the image and the timestep,
so the project exports it here. The network is built and its weights loaded through the bundle's own inference
config (config key ``network``, which loads ``ckpt_path``), traced on an example of the model's input shape, checked
against the eager network on that example, and written atomically.

Usage::

    python -m tools.export --config_file bundles/semantic_mri/configs/inference.yaml --out models/model.ts
    python -m tools.export --config_file "['bundles/semantic_mri/configs/inference.yaml','bundles/semantic_mri/configs/demo.yaml']" \\
        --out models/model.pt2 --format export
    # the exported module is called as model(x, timesteps): x (B, C_in, *spatial) float32, timesteps (B,) int64
    python -m tools.export --config_file bundles/paired_petct/configs/inference.yaml --out models/petct.ts
    # a bundle with one network per modality (a ModuleDict, e.g. paired_petct) writes one file per modality,
    # models/petct_ct.ts, models/petct_pet.ts, ... (or only --modality ct); each is called as
    # model(x, timesteps, conditions): conditions (B, n * C, *spatial), the other modalities in config order
    python -m tools.export --config_file bundles/latent_ct/configs/inference.yaml --out models/latent_unet.ts
    python -m tools.export --config_file bundles/latent_ct/configs/inference.yaml --network_key autoencoder \\
        --out models/decoder.ts
    # a latent bundle: the denoiser runs on the latent grid (``latent_size``); the autoencoder exports as its decoder,
    # called as decoder(z) with z (B, latent_channels, *latent_size)
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

from common.bundle import bundle_config_parser

__all__ = [
    "FORMATS",
    "ConditionedDenoiserSignature",
    "DecoderSignature",
    "DenoiserSignature",
    "example_inputs",
    "export_network",
    "main",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "export")


class DenoiserSignature(torch.nn.Module):
    """Fixes the call signature to ``(x, timesteps)`` (DiffusionModelUNet also takes context and class labels)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps)


class ConditionedDenoiserSignature(torch.nn.Module):
    """Fixes the call signature to ``(x, timesteps, conditions)`` (``common.networks.paired_denoiser.PairedDenoiser``)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps, conditions)


class DecoderSignature(torch.nn.Module):
    """The decoder of an ``AutoencoderKL`` as ``(z) -> image`` (latent diffusion bundles export it beside the denoiser)."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)


def _spatial_size(parser: ConfigParser) -> list[int]:
    for key in ("latent_size", "spatial_size", "roi_size"):  # a latent denoiser runs on the latent grid
        if key in parser:
            return list(parser.get_parsed_content(key))
    raise KeyError("the config has neither 'spatial_size' nor 'roi_size': cannot build an example input")


def example_inputs(
    parser: ConfigParser, batch_size: int = 1, network: torch.nn.Module | None = None
) -> tuple[torch.Tensor, ...]:
    """Example inputs of the model's shape: (x, timesteps), plus conditions for a conditioned (paired) denoiser.

    x has the network's ``in_channels`` (default ``network_def#in_channels``) on the ``spatial_size`` (or
    ``roi_size``) grid; a network with ``num_conditions`` also gets conditions of ``num_conditions *
    condition_channels`` channels.
    """
    generator = torch.Generator().manual_seed(0)
    channels = getattr(network, "in_channels", None) or parser.get_parsed_content("network_def#in_channels")
    spatial = _spatial_size(parser)
    x = torch.randn(batch_size, channels, *spatial, generator=generator)
    timesteps = torch.full(
        (batch_size,), max(parser.get_parsed_content("num_train_timesteps") // 2, 0), dtype=torch.long
    )
    if network is not None and hasattr(network, "num_conditions"):
        count = network.num_conditions * network.condition_channels
        return x, timesteps, torch.randn(batch_size, count, *spatial, generator=generator)
    return x, timesteps


def _save(module: Any, out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.jit.save(module, temporary) if fmt == "torchscript" else torch.export.save(module, temporary)
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _load(path: Path, fmt: str) -> Any:
    return torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()


def export_network(
    config_file: str | list[str], out: str, format: str = "torchscript", atol: float = 1e-4, **overrides: Any
) -> Path:
    """Export the ``network`` of ``config_file`` (weights loaded by the config) to ``out``; returns the path.

    Raises:
        ValueError: unknown format, or the exported module's output differs from the eager network by more than
            ``atol`` on the example input (nothing is left at ``out`` then).
        FileExistsError: ``out`` exists.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{format}'")
    modality = overrides.pop("modality", None)
    network_key = overrides.pop("network_key", "network")
    parser = bundle_config_parser(config_file, **overrides)
    if network_key not in parser:
        raise KeyError(f"--network_key: the config has no '{network_key}' entry")
    network = parser.get_parsed_content(network_key)
    if hasattr(network, "decode") and hasattr(network, "latent_channels"):  # an AutoencoderKL: export its decoder
        target = Path(out)
        if target.exists():
            raise FileExistsError(f"--out '{target}' exists; exports never overwrite, choose another name")
        generator = torch.Generator().manual_seed(0)
        z = torch.randn(1, *parser.get_parsed_content("latent_shape"), generator=generator)
        return _export_module(DecoderSignature(network), (z,), target, format, atol)
    if isinstance(network, torch.nn.ModuleDict):
        if modality is not None and modality not in network:
            raise ValueError(f"--modality must be one of {list(network.keys())}, got {modality!r}")
        names = [modality] if modality is not None else list(network.keys())
        base = Path(out)
        targets = {name: base.with_name(f"{base.stem}_{name}{base.suffix}") for name in names}
        existing = [str(t) for t in targets.values() if t.exists()]
        if existing:
            raise FileExistsError(f"--out: {existing} exist; exports never overwrite, choose another name")
        for name, target in targets.items():
            _export_one(network[name], parser, target, format, atol)
        return targets[names[0]]
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"--out '{target}' exists; exports never overwrite, choose another name")
    return _export_one(network, parser, target, format, atol)


def _export_one(network: torch.nn.Module, parser: ConfigParser, target: Path, fmt: str, atol: float) -> Path:
    inputs = example_inputs(parser, network=network)
    wrapper = DenoiserSignature if len(inputs) == 2 else ConditionedDenoiserSignature
    return _export_module(wrapper(network), inputs, target, fmt, atol)


def _export_module(
    module_in: torch.nn.Module, inputs: tuple[torch.Tensor, ...], target: Path, fmt: str, atol: float
) -> Path:
    module_in = module_in.cpu().eval()
    with torch.no_grad():
        expected = module_in(*inputs)
        module = torch.jit.trace(module_in, inputs) if fmt == "torchscript" else torch.export.export(module_in, inputs)
    _save(module, target, fmt)
    with torch.no_grad():
        found = _load(target, fmt)(*inputs)
    error = float((found - expected).abs().max())
    if error > atol:
        target.unlink()
        raise ValueError(f"exported module differs from the network by {error:.2e} (> atol {atol}); nothing written")
    logger.info(f"exported '{target}' ({fmt}); max difference to the eager network {error:.1e}")
    return target


def main(config_file: str | list[str], out: str, format: str = "torchscript", **overrides: Any) -> None:
    """Command line: ``python -m tools.export --config_file C --out F [--format torchscript|export] [--modality M]
    [--network_key K] [--key value]`` (``--network_key autoencoder``: the decoder of a latent bundle's autoencoder)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"exported to {export_network(config_file, out, format, **overrides)}")


if __name__ == "__main__":
    fire.Fire(main)
