"""Export a bundle's trained denoiser to TorchScript (trace) or ``torch.export`` for deployment (e.g. MONAI Deploy).

``monai.bundle ckpt_export`` / ``onnx_export`` / ``trt_export`` build the network from the config and feed it one
random input, but a diffusion denoiser takes two, the image and the timestep (``DiffusionModelUNet`` fails without
``timesteps``), so the project exports it here. The network is built and its weights loaded through the bundle's own
inference config (config key ``network``, which loads ``models/model.pt``), traced on an example of the model's input
shape, checked against the eager network on that example, and written atomically.

As ``ckpt_export`` does, the file carries the bundle's ``metadata.json`` and the inference config (the merged
configs with the overrides given, as JSON) as the extra files ``extra/metadata.json`` and ``extra/inference.json``:
TorchScript through MONAI's ``save_net_with_metadata``, ``torch.export`` through the ``extra_files`` of
``torch.export.save``. The archive's root folder is the file's stem (``model.ts`` -> ``model/extra/...``), where
MONAI Deploy's bundle operator looks for them, so the file is written under its final name in a temporary folder and
then moved into place. Read them back with ``monai.data.load_net_with_metadata(path, more_extra_files=
["inference.json"])`` or ``torch.export.load(path, extra_files={"metadata.json": "", "inference.json": ""})``.

Usage::

    python -m tools.export --config_file bundles/semantic_mri/configs/inference.yaml --out models/model.ts
    python -m tools.export \\
        --config_file "['bundles/semantic_mri/configs/inference.yaml','bundles/semantic_mri/configs/demo.yaml']" \\
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

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata

from common.bundle import bundle_config_parser, bundle_root_of
from common.io import read_json_object

__all__ = [
    "FORMATS",
    "ConditionedDenoiserSignature",
    "DecoderSignature",
    "DenoiserSignature",
    "EXTRA_FILES",
    "example_inputs",
    "export_extra_files",
    "export_network",
    "main",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "export")
EXTRA_FILES = ("metadata.json", "inference.json")
"""Names of the extra files every export carries (under ``<stem>/extra/`` in the archive)."""


class DenoiserSignature(torch.nn.Module):
    """Fixes the call signature to ``(x, timesteps)`` (DiffusionModelUNet also takes context and class labels)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps)


class ConditionedDenoiserSignature(torch.nn.Module):
    """Fixes the call signature to ``(x, timesteps, conditions)``
    (``common.networks.paired_denoiser.PairedDenoiser``)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps, conditions)


class DecoderSignature(torch.nn.Module):
    """The decoder of an ``AutoencoderKL`` as ``(z) -> image`` (latent diffusion bundles export it beside the
    denoiser)."""

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


def _config_paths(config_file: str | list[str]) -> list[Path]:
    if isinstance(config_file, str):
        files = config_file.split(",") if "," in config_file and not Path(config_file).is_file() else [config_file]
    else:
        files = list(config_file)
    return [Path(f) for f in files]


def export_extra_files(parser: ConfigParser, config_file: str | list[str], meta_file: str | None = None) -> dict:
    """``{"metadata.json": ..., "inference.json": ...}`` (JSON text) for the export of ``parser``'s network.

    ``meta_file`` defaults to the ``metadata.json`` next to the first config file (the bundle's ``configs/``);
    ``inference.json`` is the parser's config: the config files merged, with the overrides applied, and
    ``bundle_root`` left as the configs' own expression unless it was overridden (no local folder is embedded).

    Raises:
        FileNotFoundError / ValueError: ``meta_file`` missing or not a JSON object (the path is named).
    """
    meta_path = Path(meta_file) if meta_file is not None else _config_paths(config_file)[0].parent / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"--meta_file: '{meta_path}' does not exist; the export embeds the bundle's configs/metadata.json"
        )
    metadata = read_json_object(meta_path, "--meta_file")
    config = {k: v for k, v in parser.get().items() if k != "_meta_"}
    raw = ConfigParser.load_config_files([str(p) for p in _config_paths(config_file)])
    if "bundle_root" in raw and config.get("bundle_root") == bundle_root_of(_config_paths(config_file)):
        config["bundle_root"] = raw["bundle_root"]  # the configs' own rule, not this machine's folder
    return {EXTRA_FILES[0]: json.dumps(metadata), EXTRA_FILES[1]: json.dumps(config)}


def _save(module: Any, out: Path, fmt: str, extra_files: dict[str, str]) -> None:
    """Write ``module`` with ``extra_files`` to ``out`` atomically, under its final name (the archive root)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        temporary = folder / out.name
        if fmt == "torchscript":
            metadata = json.loads(extra_files[EXTRA_FILES[0]])
            others = {name: text.encode() for name, text in extra_files.items() if name != EXTRA_FILES[0]}
            save_net_with_metadata(
                module, str(temporary), include_config_vals=False, meta_values=metadata, more_extra_files=others
            )
        else:
            torch.export.save(module, temporary, extra_files=extra_files)
        os.replace(temporary, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _load(path: Path, fmt: str) -> tuple[Any, dict[str, str]]:
    """The exported module (callable) and its extra files."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    if fmt == "torchscript":
        module = torch.jit.load(str(path), _extra_files=extra)
    else:
        module = torch.export.load(str(path), extra_files=extra).module()
    return module, {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}


def export_network(
    config_file: str | list[str],
    out: str,
    format: str = "torchscript",
    atol: float = 1e-4,
    meta_file: str | None = None,
    **overrides: Any,
) -> Path:
    """Export the ``network`` of ``config_file`` (weights loaded by the config) to ``out``; returns the path.

    The file embeds ``metadata.json`` (``meta_file``, default the one beside the first config file) and
    ``inference.json`` (see the module docstring).

    Raises:
        ValueError: unknown format, ``out`` without an extension, or the exported module's output differs from the
            eager network by more than ``atol`` on the example input (nothing is left at ``out`` then).
        FileExistsError: ``out`` exists.
        FileNotFoundError: no ``metadata.json``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{format}'")
    if not Path(out).suffix:
        raise ValueError(f"--out '{out}' has no extension; name the file, e.g. model.ts (or model.pt2 for export)")
    modality = overrides.pop("modality", None)
    network_key = overrides.pop("network_key", "network")
    parser = bundle_config_parser(config_file, **overrides)
    if network_key not in parser:
        raise KeyError(f"--network_key: the config has no '{network_key}' entry")
    extra_files = export_extra_files(parser, config_file, meta_file)
    network = parser.get_parsed_content(network_key)
    if hasattr(network, "decode") and hasattr(network, "latent_channels"):  # an AutoencoderKL: export its decoder
        target = Path(out)
        if target.exists():
            raise FileExistsError(f"--out '{target}' exists; exports never overwrite, choose another name")
        generator = torch.Generator().manual_seed(0)
        z = torch.randn(1, *parser.get_parsed_content("latent_shape"), generator=generator)
        return _export_module(DecoderSignature(network), (z,), target, format, atol, extra_files)
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
            _export_one(network[name], parser, target, format, atol, extra_files)
        return targets[names[0]]
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"--out '{target}' exists; exports never overwrite, choose another name")
    return _export_one(network, parser, target, format, atol, extra_files)


def _export_one(
    network: torch.nn.Module, parser: ConfigParser, target: Path, fmt: str, atol: float, extra_files: dict[str, str]
) -> Path:
    inputs = example_inputs(parser, network=network)
    wrapper = DenoiserSignature if len(inputs) == 2 else ConditionedDenoiserSignature
    return _export_module(wrapper(network), inputs, target, fmt, atol, extra_files)


def _export_module(
    module_in: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: Path,
    fmt: str,
    atol: float,
    extra_files: dict[str, str],
) -> Path:
    module_in = module_in.cpu().eval()
    with torch.no_grad():
        expected = module_in(*inputs)
        module = torch.jit.trace(module_in, inputs) if fmt == "torchscript" else torch.export.export(module_in, inputs)
    _save(module, target, fmt, extra_files)
    loaded, extras = _load(target, fmt)
    with torch.no_grad():
        found = loaded(*inputs)
    error = float((found - expected).abs().max())
    if error > atol:
        target.unlink()
        raise ValueError(f"exported module differs from the network by {error:.2e} (> atol {atol}); nothing written")
    empty = [name for name in EXTRA_FILES if not extras.get(name)]
    if empty:
        target.unlink()
        raise RuntimeError(f"the exported file lacks the extra files {empty}; nothing written")
    logger.info(f"exported '{target}' ({fmt}); max difference to the eager network {error:.1e}")
    return target


def main(
    config_file: str | list[str], out: str, format: str = "torchscript", meta_file: str | None = None, **overrides: Any
) -> None:
    """Command line: ``python -m tools.export --config_file C --out F [--format torchscript|export] [--modality M]
    [--network_key K] [--meta_file M] [--key value]`` (``--network_key autoencoder``: the decoder of a latent
    bundle's autoencoder; ``--meta_file``: default ``metadata.json`` beside the first config file)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"exported to {export_network(config_file, out, format, meta_file=meta_file, **overrides)}")


if __name__ == "__main__":
    fire.Fire(main)
