"""Axial chest CT slices for the lung CT variant of the guidance bundle (paper 003's NLST model).

Slices come from the 3D ``thorax_ct`` phantom (:func:`common.data.phantoms.thorax.thorax_ct_phantom`), windowed to
[-1000, 1000] HU and mapped to [0, 1]. A case without cancer is an axial slice through the lungs clear of any tumour
(the anatomy references); a case with cancer is the slice through the primary tumour's centre. Labels: 0 other, 1 lung
(where a tumour may be placed), 3 tumour (the mammography phantom's lesion label). Tumour patches (``patches/``) are
crops centred on the tumour of cases from a separate random stream. The layout is that of
:func:`common.data.phantoms.mammography.write_mammography_dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data.phantoms.kinds import phantom_grid
from common.data.phantoms.thorax import thorax_ct_phantom
from common.io import atomic_folder, write_image_label_pair

__all__ = ["THORAX_SLICE_LABELS", "thorax_slice", "write_thorax_slice_dataset"]

THORAX_SLICE_LABELS = {"0": "other", "1": "lung", "3": "tumour"}
_HU_WINDOW = (-1000.0, 1000.0)


def thorax_slice(size: int, rng: np.random.Generator, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], label) of one axial slice (size x size) of a thorax phantom, through the tumour or clear of
    it."""
    shape, spacing = phantom_grid("thorax_ct", int(size))
    case = thorax_ct_phantom(shape, spacing, rng)
    lungs = (case.masks["Lung-Left"] > 0) | (case.masks["Lung-Right"] > 0)
    gtv = case.masks["GTV-1"] > 0
    tumours = case.label > 0
    if tumour:
        z = int(round(np.nonzero(gtv)[2].mean()))
    else:
        clear = [k for k in range(shape[2]) if not tumours[:, :, k].any() and lungs[:, :, k].sum() > 0]
        z = max(clear, key=lambda k: lungs[:, :, k].sum())
    low, high = _HU_WINDOW
    image = (np.clip(case.images["ct"][:, :, z], low, high) - low) / (high - low)
    label = np.where(lungs[:, :, z], 1, 0).astype(np.uint8)
    label[tumours[:, :, z]] = 3
    return image.astype(np.float32), label


def write_thorax_slice_dataset(
    out_dir: str | Path,
    n: int = 16,
    size: int = 64,
    seed: int = 0,
    cancer_fraction: float = 0.5,
    patches: int = 6,
    patch_size: int = 16,
    calcification_patch_fraction: float = 0.0,
) -> Path:
    """Write ``n`` slices (``imagesTr``/``labelsTr``), ``patches`` tumour patches and a ``dataset.json`` atomically.

    Case ``i`` draws from ``(seed, i)`` and has a tumour when ``i % 10 < round(10 cancer_fraction)``; patch ``j``
    from ``(seed, 1, j)``; every patch entry has ``lesion: "tumour"``. ``calcification_patch_fraction`` is the
    mammography phantom's option (the bundle's shared phantom settings pass it); this phantom has no calcifications,
    so it must be 0.
    """
    if float(calcification_patch_fraction) != 0.0:
        raise ValueError(
            "config key 'phantom_calcification_patch_fraction': the thorax CT slice phantom has tumour patches only, "
            f"expected 0, got {calcification_patch_fraction}"
        )
    spacing = 350.0 / int(size)
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    with atomic_folder(out_dir) as staging:
        entries, patch_entries = [], []
        for index in range(int(n)):
            cancer = index % 10 < round(float(cancer_fraction) * 10)
            image, label = thorax_slice(size, np.random.default_rng((seed, index)), cancer)
            names = f"imagesTr/lung_{index:03d}.nii.gz", f"labelsTr/lung_{index:03d}.nii.gz"
            entries.append(write_image_label_pair(staging, names, image, label, affine) | {"cancer": int(cancer)})
        for index in range(int(patches)):
            image, label = thorax_slice(size, np.random.default_rng((seed, 1, index)), True)
            rows, cols = np.nonzero(label == 3)
            half = int(patch_size) // 2
            top = int(np.clip(round(rows.mean()) - half, 0, int(size) - int(patch_size)))
            left = int(np.clip(round(cols.mean()) - half, 0, int(size) - int(patch_size)))
            window = (slice(top, top + int(patch_size)), slice(left, left + int(patch_size)))
            names = f"patches/patch_{index:03d}.nii.gz", f"patches/patch_{index:03d}_mask.nii.gz"
            mask = (label[window] == 3).astype(np.uint8)
            patch_entries.append(
                write_image_label_pair(staging, names, image[window], mask, affine) | {"lesion": "tumour"}
            )
        description = {
            "name": "thorax_ct_slices",
            "description": "Digital phantom: axial chest CT slices ([-1000, 1000] HU -> [0, 1]) with lung tumours",
            "modality": {"0": "CT"},
            "labels": THORAX_SLICE_LABELS,
            "numTraining": len(entries),
            "training": entries,
            "patches": patch_entries,
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return Path(out_dir)
