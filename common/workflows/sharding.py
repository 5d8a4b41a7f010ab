"""What a sampling run shares between processes and between attempts: its rank, its shard and its run manifest.

``torchrun`` starts one process per device; ``torch.distributed`` (initialised by the ``multi_gpu_inference.yaml``
overlay) gives each its rank. The run's work is a fixed list of units (a batch of sample indices of one item), laid
out independently of the number of processes; rank ``r`` of ``W`` takes units ``r, r + W, r + 2W, ...``. Without an
initialised process group a run is rank 0 of 1.

The run manifest (``run_manifest.json`` in the output folder) records what defines the samples: the seed, the
sampler, the steps, the sample count, the conditioning inputs, the weights (sha256) and the bundle. A rerun into the
same folder with the same manifest resumes (completed samples are skipped); another manifest is an error naming the
first field that differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from common.checkpoint import file_hash
from common.io import atomic_write_text, read_json_object

__all__ = [
    "MANIFEST_NAME",
    "rank_and_world_size",
    "barrier",
    "shard",
    "bundle_run_fields",
    "manifest_difference",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "run_manifest.json"

T = TypeVar("T")


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process of the default group (nothing to wait for in a single-process run)."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def shard(units: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``units``: every ``world_size``-th one from position ``rank`` (disjoint, complete).

    Raises:
        ValueError: ``rank`` outside ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank}, world {world_size}")
    return list(units[rank::world_size])


def bundle_run_fields(
    metadata: Mapping[str, Any] | None, checkpoints: Mapping[str, str | os.PathLike], **fields: Any
) -> dict[str, Any]:
    """The bundle's part of a run manifest: its name and version, the sha256 of each weight file, and ``fields``.

    Args:
        metadata: the bundle's ``metadata.json`` content (``@_meta_`` in a config); ``name`` and ``version`` are kept.
        checkpoints: ``{config key: weight file}``; each file is recorded by name and sha256.
        fields: further settings that define the samples (e.g. ``sampler``).
    """
    metadata = metadata or {}
    return {
        "bundle": metadata.get("name"),
        "version": metadata.get("version"),
        "checkpoints": {
            key: {"file": Path(path).name, "sha256": file_hash(path)} for key, path in sorted(checkpoints.items())
        },
        **fields,
    }


def _normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, default=str))


def manifest_difference(expected: Mapping[str, Any], found: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where ``found`` differs from ``expected``, with both values; None if equal."""
    expected, found = _normalised(expected), _normalised(found)

    def walk(a: Any, b: Any, where: str) -> tuple[str, Any, Any] | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                difference = walk(a.get(key), b.get(key), f"{where}.{key}" if where else key)
                if difference:
                    return difference
            return None
        return None if a == b else (where, a, b)

    return walk(expected, found, "")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run manifest in ``folder`` (None if there is none)."""
    path = Path(folder) / MANIFEST_NAME
    return read_json_object(path, "run manifest") if path.is_file() else None


def write_manifest(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as ``folder/run_manifest.json`` atomically (replacing an earlier one)."""
    text = json.dumps(_normalised(manifest), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(Path(folder) / MANIFEST_NAME, text, overwrite=True)
