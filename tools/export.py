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

__all__ = ["FORMATS", "DenoiserSignature", "example_inputs", "export_network", "main"]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "export")


class DenoiserSignature(torch.nn.Module):
    """Fixes the call signature to ``(x, timesteps)`` (DiffusionModelUNet also takes context and class labels)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps)


def example_inputs(parser: ConfigParser, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, timesteps) of the model's input shape: ``network_def#in_channels`` channels on the ``spatial_size`` grid."""
    channels = parser.get_parsed_content("network_def#in_channels")
    spatial = parser.get_parsed_content("spatial_size")
    x = torch.randn(batch_size, channels, *spatial, generator=torch.Generator().manual_seed(0))
    timesteps = torch.full(
        (batch_size,), max(parser.get_parsed_content("num_train_timesteps") // 2, 0), dtype=torch.long
    )
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
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"--out '{target}' exists; exports never overwrite, choose another name")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(overrides)
    network = DenoiserSignature(parser.get_parsed_content("network")).cpu().eval()
    x, timesteps = example_inputs(parser)
    with torch.no_grad():
        expected = network(x, timesteps)
        module = (
            torch.jit.trace(network, (x, timesteps))
            if format == "torchscript"
            else torch.export.export(network, (x, timesteps))
        )
    _save(module, target, format)
    with torch.no_grad():
        found = _load(target, format)(x, timesteps)
    error = float((found - expected).abs().max())
    if error > atol:
        target.unlink()
        raise ValueError(f"exported module differs from the network by {error:.2e} (> atol {atol}); nothing written")
    logger.info(f"exported '{target}' ({format}); max difference to the eager network {error:.1e}")
    return target


def main(config_file: str | list[str], out: str, format: str = "torchscript", **overrides: Any) -> None:
    """Command line: ``python -m tools.export --config_file C --out F [--format torchscript|export] [--key value]``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"exported to {export_network(config_file, out, format, **overrides)}")


if __name__ == "__main__":
    fire.Fire(main)
