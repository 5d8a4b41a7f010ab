"""Write a phantom dataset (NIfTI + decathlon ``dataset.json``) so a bundle can run without real data.

Usage::

    python -m tools.make_phantoms semantic_mri --out data/semantic_mri_phantoms --n 8 --size 64
    python -m tools.make_phantoms semantic_mri_brats --out data/brats_phantoms --n 4 --size 96 --seed 1
    python -m tools.make_phantoms paired_petct --out data/petct_phantoms --n 4 --size 64
    python -m tools.make_phantoms latent_ct --out data/lung_phantoms --n 4 --size 64

``kind`` is a registered phantom kind (``whole_head_mri``, ``brats_mri``, ``head_neck_petct``, ``thorax_ct``) or a
bundle alias (``semantic_mri``, ``semantic_mri_brats``, ``paired_petct``, ``latent_ct``); see
``common.data.phantoms.kinds.PHANTOM_KINDS``. ``--size`` is the number of voxels along the first axis (the field of
view stays fixed, so a larger size is a finer grid). ``--out`` must not exist or be empty.

``head_neck_petct`` writes HECKTOR 2022-style files (``imagesTr/HN_phantom_000__CT.nii.gz``, ``__PT.nii.gz``,
``labelsTr/HN_phantom_000.nii.gz``); the grid printed is the CT and label grid, the PET has its own coarser grid
(its affine is in its file), so a loader resamples it onto the CT.

``thorax_ct`` writes one folder per case, ``LUNG_phantom_000/ct.nii.gz`` (HU) and
``LUNG_phantom_000/masks/<structure>.nii.gz`` (GTV-1, GTV-2 and GTV-3 when present, Lung-Left, Lung-Right, Heart,
Esophagus, Spinal-Cord), listed in ``dataset.json`` as ``{"case_id", "image", "masks": {structure: path}}``.
"""

from __future__ import annotations

from pathlib import Path

import fire

from common.data.phantoms.kinds import get_phantom_kind, phantom_grid, write_phantom_dataset

__all__ = ["main"]


def main(kind: str, out: str, n: int = 8, size: int = 64, seed: int = 0) -> None:
    """Write ``n`` cases of phantom ``kind`` on a ``size``-voxel grid into ``out`` and print where they went.

    Args:
        kind: phantom kind or bundle alias, e.g. ``semantic_mri`` or ``paired_petct``.
        out: output folder; must not exist or be empty.
        n: number of cases. Default 8.
        size: voxels along the first axis (of the label grid). Default 64.
        seed: case ``i`` is drawn from the random stream ``(seed, i)``. Default 0.
    """
    phantom = get_phantom_kind(kind)
    shape, spacing = phantom_grid(kind, size)
    folder = write_phantom_dataset(kind, Path(out), n=n, size=size, seed=seed)
    grid = "x".join(str(s) for s in shape)
    voxel = "x".join(f"{s:g}" for s in spacing)
    print(f"wrote {n} '{phantom.name}' phantom case(s) of {grid} voxels ({voxel} mm) to {folder}")


if __name__ == "__main__":
    fire.Fire(main)
