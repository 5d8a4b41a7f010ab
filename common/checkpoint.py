"""Weight files and training checkpoints: writing, discovery and loading, with errors that say what does not fit.

Two kinds of files live in a bundle's ``models/`` (written by :class:`common.handlers.TrainingCheckpointer`):

- **inference files**, what a consumer needs: ``model.pt`` (and ``model_<net>.pt`` per extra network) is a plain
  ``state_dict`` of CPU tensors, so ``network.load_state_dict(torch.load("model.pt", weights_only=True))`` works
  as model-zoo bundles, MONAI Label and MONAI Deploy expect; small non-weight values inference needs (the latent
  scale factor of latent diffusion) are a JSON file of a holder module's buffers (:func:`save_state_json`);
- **training checkpoints**, ``<prefix>_epoch=N.pt``: a dict of state dicts (``network``, ``ema``, ``optimizer``,
  ``trainer``, ...) that resuming reads.

Everything loads with ``torch.load(..., weights_only=True)``. Inference configs load a plain state dict with
:func:`load_network_weights` (``key=None``), or one entry of a training checkpoint (``key="network"`` for the raw
weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from torch import nn

from common.io import atomic_write_text, read_json_object

__all__ = [
    "unwrap",
    "atomic_torch_save",
    "latest_checkpoint",
    "check_state_dict_fits",
    "plain_state_dict",
    "read_checkpoint",
    "file_hash",
    "check_listed_hash",
    "load_network_weights",
    "save_state_json",
    "load_state_json",
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


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` (unwrapped from DDP) as detached CPU tensors: what an inference file holds."""
    return {name: tensor.detach().cpu() for name, tensor in unwrap(module).state_dict().items()}


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


def _bundle_of(path: Path, entry: str) -> Path | None:
    """The bundle folder of ``path`` when it ends with the ``large_files.yml`` entry ``entry`` (else None)."""
    tail = Path(entry).parts
    if not tail or path.parts[-len(tail) :] != tail:
        return None
    return Path(*path.parts[: -len(tail)]) if len(path.parts) > len(tail) else Path(".")


def _listed_entry(listing: Path, entry: str) -> dict | None:
    """The ``large_files.yml`` entry whose ``path`` is ``entry`` (None when the listing or the entry is missing).

    Raises:
        ValueError: naming the listing, when it exists but cannot be read as YAML.
    """
    if not listing.is_file():
        return None
    try:
        content = yaml.safe_load(listing.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"'{listing}' is not a readable large_files.yml ({e})") from e
    entries = content.get("large_files", []) if isinstance(content, dict) else []
    wanted = Path(entry).parts
    found = [e for e in entries or [] if isinstance(e, dict) and Path(str(e.get("path", ""))).parts == wanted]
    return found[0] if found else None


def _listed_in(listing: Path, entry: str) -> bool:
    try:
        return _listed_entry(listing, entry) is not None
    except ValueError:  # only for wording a missing-file error: an unreadable listing is reported when loading
        return False


def file_hash(path: str | Path, hash_type: str = "sha256") -> str:
    """Hex digest of a file (``hash_type``: any ``hashlib`` algorithm, e.g. sha256 or md5), read in 1 MiB blocks."""
    try:
        digest = hashlib.new(str(hash_type).lower())
    except ValueError as e:
        raise ValueError(f"hash_type '{hash_type}' is not a hashlib algorithm (e.g. sha256, md5)") from e
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_listed_hash(path: str | Path, large_files_entry: str, config_key: str = "ckpt_path") -> None:
    """Compare ``path`` with the hash its bundle's ``large_files.yml`` entry records, when it is a download.

    The bundle is the folder ``path`` lies in with ``large_files_entry`` as its tail (``<bundle>/models/x.pt``).
    Only entries with a ``url`` are checked (what ``download_large_files`` fetched): a file a release ships (empty
    url) is checked by ``tools.verify_bundles --release`` instead, and may be retrained in place. Nothing is checked
    when the file lies elsewhere, the bundle lists no such entry or the entry has no hash.

    Raises:
        ValueError: naming the config key, the file and both hashes, when the file does not match its entry.
    """
    path = Path(path)
    bundle = _bundle_of(path, large_files_entry)
    entry = _listed_entry(bundle / "large_files.yml", large_files_entry) if bundle is not None else None
    if not entry or not entry.get("hash_val") or not entry.get("url"):
        return
    hash_type = entry.get("hash_type") or "md5"  # MONAI's download_url default
    found = file_hash(path, hash_type)
    if found != str(entry["hash_val"]).lower():
        raise ValueError(
            f"config key '{config_key}': '{path}' does not match its large_files.yml entry '{large_files_entry}' "
            f"of '{bundle}': expected {hash_type} {entry['hash_val']}, found {found} (a damaged or different "
            "download: fetch it again with `python -m monai.bundle download_large_files --bundle_path "
            f"{bundle}`)"
        )


def _missing_file_error(
    path: Path, config_key: str, what: str, hint: str, large_files_entry: str | None
) -> FileNotFoundError:
    """The error for a weight file that is not there: the config key, the path, the large_files.yml entry, a hint."""
    message = f"config key '{config_key}': {what} '{path}' does not exist."
    if large_files_entry:
        bundle = _bundle_of(path, large_files_entry)
        listing = bundle / "large_files.yml" if bundle is not None else None
        if listing is not None and _listed_in(listing, large_files_entry):
            message += (
                f" It is the large_files.yml entry '{large_files_entry}' of '{bundle}': fetch it with "
                f"`python -m monai.bundle download_large_files --bundle_path {bundle}`."
            )
        elif listing is not None:
            found = "has no entry" if listing.is_file() else "does not exist, so it has no entry"
            message += (
                f" No published file is listed for it ('{listing}' {found} '{large_files_entry}'; published "
                "weights are listed there and fetched with `python -m monai.bundle download_large_files "
                f"--bundle_path {bundle}`)."
            )
        else:
            message += f" (The bundle's own file is its large_files.yml entry '{large_files_entry}'.)"
    return FileNotFoundError(f"{message} {hint}".strip())


def read_checkpoint(
    path: str | Path, config_key: str = "ckpt_path", hint: str = "", large_files_entry: str | None = None
) -> dict:
    """``torch.load`` a weight file or checkpoint on CPU (``weights_only=True``), with clear errors.

    Args:
        path: the file.
        config_key: config key that holds ``path``, named in errors.
        hint: appended to the missing-file error (e.g. which command trains the model).
        large_files_entry: ``path`` of the file's entry in the bundle's ``large_files.yml``; the missing-file error
            names it and says whether the bundle lists it (then ``download_large_files`` fetches it), and a listed
            hash is checked (:func:`check_listed_hash`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not match its listed hash, cannot be read with ``weights_only=True`` or does not
            hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path, config_key, "weight file", hint, large_files_entry)
    if large_files_entry:
        check_listed_hash(path, large_files_entry, config_key)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"config key '{config_key}': cannot read checkpoint '{path}' ({e})") from e
    if not isinstance(content, dict):
        raise ValueError(f"config key '{config_key}': checkpoint '{path}' holds a {type(content).__name__}, not a dict")
    return content


def _is_training_checkpoint(content: Mapping) -> bool:
    return any(isinstance(value, Mapping) for value in content.values())


def load_network_weights(
    network: nn.Module,
    path: str | Path,
    key: str | None = None,
    config_key: str = "ckpt_path",
    hint: str = "",
    large_files_entry: str | None = None,
) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (in place, after checking they fit) and return the network.

    Args:
        network: the network to fill.
        path: a plain state dict (``models/model.pt``, the inference weights) when ``key`` is None, else a training
            checkpoint (dict of state dicts) whose entry ``key`` is loaded.
        key: None for a plain state dict; ``"network"`` (raw weights) or ``"ema"`` for an entry of a training
            checkpoint.
        config_key: config key that holds ``path``, named in errors.
        hint: appended to the missing-file error (e.g. which command trains the model).
        large_files_entry: ``path`` of the file's ``large_files.yml`` entry, named in the missing-file error; a
            downloaded file is checked against the entry's hash (:func:`check_listed_hash`).

    Raises:
        FileNotFoundError: no file at ``path``.
        KeyError: ``key`` is not an entry of the file.
        ValueError: unreadable file; a training checkpoint given where a plain state dict is expected; a state dict
            that does not fit ``network`` (the first mismatching layer is named).
    """
    content = read_checkpoint(path, config_key, hint, large_files_entry)
    if key is not None:
        if key not in content:
            kind = "a training checkpoint" if _is_training_checkpoint(content) else "a plain state dict"
            raise KeyError(
                f"config key '{config_key}': '{path}' ({kind}) has no entry '{key}'; it has {sorted(content)[:8]}. "
                "Entries such as 'network' (raw weights) exist in training checkpoints (<prefix>_epoch=N.pt); "
                "model.pt is a plain state dict, loaded with no entry (key null)"
            )
        content = content[key]
    elif _is_training_checkpoint(content):
        raise ValueError(
            f"config key '{config_key}': '{path}' is a training checkpoint with entries {sorted(content)}, not a plain "
            "state dict: load the inference weights (models/model.pt) or name the entry to load (e.g. 'network' "
            "for the raw weights)"
        )
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ValueError(f"config key '{config_key}': '{path}' does not hold a state dict of tensors")
    check_state_dict_fits(network, content, str(path))
    unwrap(network).load_state_dict(content)
    return network


def save_state_json(module: nn.Module, path: str | Path) -> Path:
    """Write the state dict of a small holder ``module`` (e.g. ``LatentStats``) to ``path`` as JSON, atomically.

    Each buffer is written as a number, a boolean or a nested list (``Tensor.tolist``), so a consumer reads it
    without torch; :func:`load_state_json` restores it into a module of the same kind.
    """
    values = {name: tensor.detach().cpu().tolist() for name, tensor in unwrap(module).state_dict().items()}
    return atomic_write_text(path, json.dumps(values, indent=2) + "\n", overwrite=True)


def load_state_json(
    module: nn.Module,
    path: str | Path,
    config_key: str,
    hint: str = "",
    large_files_entry: str | None = None,
) -> nn.Module:
    """Fill ``module``'s buffers from a JSON file written by :func:`save_state_json` and return the module.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names ``config_key`` and the ``large_files.yml`` entry).
        ValueError: not matching its listed hash (:func:`check_listed_hash`), not a JSON object, an entry missing or
            of the wrong shape (the entry is named).
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path, config_key, "file", hint, large_files_entry)
    if large_files_entry:
        check_listed_hash(path, large_files_entry, config_key)
    values = read_json_object(path, f"config key '{config_key}'")
    expected = unwrap(module).state_dict()
    missing = [name for name in expected if name not in values]
    if missing:
        raise ValueError(f"config key '{config_key}': '{path}' lacks entry '{missing[0]}'; it has {sorted(values)}")
    try:
        state = {name: torch.as_tensor(values[name], dtype=expected[name].dtype) for name in expected}
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"config key '{config_key}': '{path}' has an entry that is not numeric ({e})") from e
    check_state_dict_fits(module, {**state, **{k: v for k, v in values.items() if k not in state}}, str(path))
    unwrap(module).load_state_dict(state)
    return module
