"""Checkpoint discovery and loading with errors that say what does not fit.

Training writes MONAI ``CheckpointSaver`` files: ``checkpoint_epoch=N.pt`` every few epochs and ``model.pt`` at the
end, each a dict of state dicts (``network``, ``ema``, ``optimizer``, ``trainer``, ...). Inference loads one entry
of such a file (``ema`` by default) into its network.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "unwrap",
    "atomic_torch_save",
    "latest_checkpoint",
    "check_state_dict_fits",
    "read_checkpoint",
    "load_network_weights",
]


_STEP = re.compile(r"(?:epoch|iteration)=(\d+)")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else module


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename: a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600 files; give the usual permissions
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def latest_checkpoint(ckpt_dir: str | Path, pattern: str = "checkpoint_*.pt") -> Path | None:
    """The checkpoint in ``ckpt_dir`` with the highest epoch/iteration number in its name (None if there is none)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)) if (m := _STEP.search(p.name)) else -1, p.stat().st_mtime, p) for p in folder.glob(pattern)
    ]
    return max(found)[2] if found else None


def check_state_dict_fits(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming the first layer where ``state_dict`` (read from ``source``) does not fit ``module``.

    Covers parameters the network has but the checkpoint lacks, entries the network does not have, and shape
    mismatches, so a user sees e.g. ``layer 'conv_in.conv.weight': checkpoint shape (64, 3, 3, 3, 3), network
    shape (64, 5, 3, 3, 3)`` rather than a long list of keys.
    """
    expected = unwrap(module).state_dict()
    for name, tensor in expected.items():
        if name not in state_dict:
            raise ValueError(f"checkpoint '{source}' does not fit the network: layer '{name}' is missing from it")
        found = tuple(state_dict[name].shape)
        if found != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint '{source}' does not fit the network: layer '{name}' has shape {found} in the checkpoint, "
                f"{tuple(tensor.shape)} in the network (were the network settings changed since training?)"
            )
    extra = [name for name in state_dict if name not in expected]
    if extra:
        raise ValueError(f"checkpoint '{source}' does not fit the network: it has layer '{extra[0]}' the network lacks")


def read_checkpoint(path: str | Path, config_key: str = "ckpt_path", hint: str = "") -> dict:
    """``torch.load`` a checkpoint on CPU, with clear errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config key '{config_key}': checkpoint '{path}' does not exist. {hint}".strip())
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"config key '{config_key}': cannot read checkpoint '{path}' ({e})") from e
    if not isinstance(content, dict):
        raise ValueError(f"config key '{config_key}': checkpoint '{path}' holds a {type(content).__name__}, not a dict")
    return content


def load_network_weights(
    network: nn.Module, path: str | Path, key: str | None = "ema", config_key: str = "ckpt_path", hint: str = ""
) -> nn.Module:
    """Load entry ``key`` of checkpoint ``path`` into ``network`` (in place) and return the network.

    Args:
        network: the network to fill.
        path: a ``CheckpointSaver`` file (dict of state dicts) or a bare state dict.
        key: entry to load (``"ema"`` for the EMA weights, ``"network"`` for the raw weights); ``None`` when the file
            is a bare state dict.
        config_key: config key named in error messages.
        hint: appended to the missing-file error (e.g. which command trains the model).
    """
    content = read_checkpoint(path, config_key, hint)
    if key is not None:
        if key not in content:
            raise KeyError(
                f"config key '{config_key}': checkpoint '{path}' has no entry '{key}'; it has {sorted(content)}"
            )
        content = content[key]
    check_state_dict_fits(network, content, str(path))
    unwrap(network).load_state_dict(content)
    return network
