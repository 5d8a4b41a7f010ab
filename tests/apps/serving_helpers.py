"""Helpers of the serving tests: a tiny released semantic_mri bundle and label maps on unusual grids."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundles"))  # bundle_helpers (no package)
from bundle_helpers import REPO_ROOT, release_and_unpack  # noqa: E402

from common.bundle import bundle_config_parser  # noqa: E402

BUNDLE = "semantic_mri"
# A network and schedule small enough for a request of about a second on a CPU (random weights: the HTTP contract and
# the geometry are tested, not image quality).
TINY_OVERLAY = """spatial_size: [16, 16, 16]
pixdim: [12.0, 12.0, 12.0]
unet_channels: [32, 32]
unet_attention_levels: [false, true]
unet_num_head_channels: 32
unet_norm_num_groups: 32
num_train_timesteps: 10
num_inference_steps: 5
"""
TINY = "test_tiny.yaml"
# A label map on a grid unlike the model's: left-posterior (flipped) axes, anisotropic spacing, off-centre origin.
AFFINE = np.array([[-10.0, 0, 0, 95.0], [0, -11.0, 0, 90.0], [0, 0, 12.0, -80.0], [0, 0, 0, 1]])
SHAPE = (20, 18, 14)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_release(work: Path) -> Path:
    """An unpacked release of semantic_mri with randomly initialised tiny weights and the overlay ``test_tiny.yaml``
    in its ``configs/`` (load it after ``serve.yaml``)."""
    trained = work / "trained"
    (trained / "models").mkdir(parents=True)
    overlay = work / TINY
    overlay.write_text(TINY_OVERLAY)
    configs = REPO_ROOT / "bundles" / BUNDLE / "configs"
    parser = bundle_config_parser([configs / "inference.yaml", overlay], bundle_root=str(trained))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), trained / "models" / "model.pt")
    folder = release_and_unpack(BUNDLE, trained, work)
    (folder / "configs" / TINY).write_text(TINY_OVERLAY)
    return folder


def label_map(values: tuple[int, ...] = (1, 2), nan: bool = False) -> np.ndarray:
    """A head (first value) holding a tumour (second value) on ``SHAPE``."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    label = np.zeros(SHAPE, dtype=np.float32)
    label[(grid**2).sum(0) < 0.8] = values[0]
    label[((grid - 0.2) ** 2).sum(0) < 0.08] = values[1]
    if nan:
        label[0, 0, 0] = np.nan
    return label


def write_label_map(path: Path, label: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(label, affine), str(path))
    return path
