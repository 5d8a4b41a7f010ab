"""Digital phantoms that stand in for the real datasets, so every bundle trains and samples without data.

Two brain-MRI phantoms for the ``semantic_mri`` bundle (Med-DDPM, Dorjsembe et al. 2024):

- ``whole_head_mri``: a whole-head contrast-enhanced T1 (T1c) scan that is not skull-stripped, as in the paper's
  clinical radiosurgery dataset, with labels 0 background, 1 head, 2 tumour (enhancing rim + necrotic core).
- ``brats_mri``: a skull-stripped BraTS-style case with four co-registered modalities (T1, T1ce, T2, FLAIR) and the
  BraTS labels 0 background, 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour (ET).

One head-and-neck PET-CT phantom for the ``paired_petct`` bundle (paired CT / PET / tumour-mask generation):

- ``head_neck_petct``: a HECKTOR 2022-style case from the lower neck up to the lower brain: CT in Hounsfield units,
  FDG PET in SUV and the primary tumour (GTVp) as label 1. As on real scanners, the PET lies on its own coarser grid
  with a shifted origin and a smaller field of view, so a loader must resample it onto the CT grid by the affines.

One chest CT phantom for the ``latent_ct`` bundle (latent diffusion of lung CT with tumours):

- ``thorax_ct``: an NSCLC-Radiomics-style chest CT in Hounsfield units, the patient lying on the couch, with one
  binary mask per structure as an RTSTRUCT export gives them: the primary tumour GTV-1, in some cases nodules GTV-2
  and GTV-3, both lungs, heart, oesophagus and spinal cord. The couch lies outside the body, across an air gap, so a
  body-isolation step can remove it.

The anatomy has a physical size in millimetres, so a coarse grid shows the same head at a lower resolution. Every
case is drawn from a ``numpy.random.Generator``: head size, shape and pose, cortical folding, ventricle size, and an
irregular ring-enhancing tumour placed inside the brain, clear of the skull. Tissue boundaries carry partial-volume
fractions; images get a smooth multiplicative bias field and noise.

``write_phantom_dataset`` writes a kind as NIfTI files plus a MONAI-decathlon-style ``dataset.json``. Kinds live in
the ``PHANTOM_KINDS`` registry (with ``PHANTOM_ALIASES`` for bundle names) so later bundles add their own anatomies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.phantoms.geometry import MIN_GRID_SIZE, PhantomCase, _check_shape, _check_spacing, phantom_affine
from common.data.phantoms.head_neck import HECKTOR_MODALITIES, PETCT_MODALITIES, head_neck_petct_phantom
from common.data.phantoms.mri import BRATS_MODALITIES, brats_mri_phantom, whole_head_mri_phantom
from common.data.phantoms.thorax import THORAX_STRUCTURES, thorax_ct_phantom
from common.io import atomic_folder, atomic_write_nifti

__all__ = [
    "PhantomKind",
    "PHANTOM_KINDS",
    "PHANTOM_ALIASES",
    "get_phantom_kind",
    "phantom_grid",
    "write_phantom_dataset",
]


# --------------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomKind:
    """A registered phantom anatomy and how its dataset is laid out on disk.

    Attributes:
        name: registry key.
        description: one line for ``dataset.json``.
        generate: ``(shape, spacing, rng) -> PhantomCase``.
        field_of_view_mm: default field of view (mm) per axis; a grid of ``size`` voxels along the first axis spans it.
        modalities: image names, in channel order.
        labels: label value -> name, as in ``dataset.json``.
        case_id: format string for case ``i``, e.g. ``"head_{:03d}"``.
        case_files: ``case_id -> (image paths, label path)``, relative to the dataset folder, one image per modality.
            Needed unless ``write_case`` is given.
        modality_names: the modalities' names in ``dataset.json`` (e.g. ``"CT"``, ``"PT"``), in channel order.
            Default ``None``: the ``modalities`` themselves.
        write_case: ``(case, case_id, folder, affine) -> dataset.json entry``: writes one case's files under
            ``folder`` itself, for layouts that ``case_files`` cannot describe (one mask file per structure).
            Default ``None``: images from ``case_files`` and one label map.
        structures: structure names the cases' ``masks`` may hold, listed in ``dataset.json``. Default: none.
    """

    name: str
    description: str
    generate: Callable[[Sequence[int], Sequence[float], np.random.Generator], PhantomCase]
    field_of_view_mm: tuple[float, float, float]
    modalities: tuple[str, ...]
    labels: dict[str, str]
    case_id: str
    case_files: Callable[[str], tuple[list[str], str]] | None = None
    modality_names: tuple[str, ...] | None = None
    write_case: Callable[[PhantomCase, str, Path, np.ndarray], dict] | None = None
    structures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.case_files is None and self.write_case is None:
            raise ValueError(f"phantom kind '{self.name}' needs case_files or write_case to lay out its files")


def _decathlon_files(case: str) -> tuple[list[str], str]:
    return [f"imagesTr/{case}.nii.gz"], f"labelsTr/{case}.nii.gz"


def _brats_files(case: str) -> tuple[list[str], str]:
    return [f"{case}/{case}_{modality}.nii.gz" for modality in BRATS_MODALITIES], f"{case}/{case}_seg.nii.gz"


def _hecktor_files(case: str) -> tuple[list[str], str]:
    return [f"imagesTr/{case}__{modality}.nii.gz" for modality in HECKTOR_MODALITIES], f"labelsTr/{case}.nii.gz"


def _structure_files(case: PhantomCase, case_id: str, folder: Path, affine: np.ndarray) -> dict:
    """Write ``<case_id>/ct.nii.gz`` and ``<case_id>/masks/<structure>.nii.gz``; return the ``dataset.json`` entry."""
    image = f"{case_id}/ct.nii.gz"
    atomic_write_nifti(case.images["ct"][None], affine, folder / image)
    masks = {}
    for name, mask in case.masks.items():
        masks[name] = f"{case_id}/masks/{name}.nii.gz"
        atomic_write_nifti(mask[None].astype(np.uint8), affine, folder / masks[name])
    return {"case_id": case_id, "image": image, "masks": masks}


PHANTOM_KINDS: dict[str, PhantomKind] = {
    "whole_head_mri": PhantomKind(
        name="whole_head_mri",
        description="Digital phantom: whole-head T1c MRI (not skull-stripped) with a ring-enhancing tumour",
        generate=whole_head_mri_phantom,
        field_of_view_mm=(192.0, 192.0, 192.0),
        modalities=("t1c",),
        labels={"0": "background", "1": "head", "2": "tumour"},
        case_id="head_{:03d}",
        case_files=_decathlon_files,
    ),
    "brats_mri": PhantomKind(
        name="brats_mri",
        description="Digital phantom: skull-stripped BraTS-style brain MRI (T1, T1ce, T2, FLAIR) with a glioma",
        generate=brats_mri_phantom,
        field_of_view_mm=(192.0, 192.0, 144.0),
        modalities=BRATS_MODALITIES,
        labels={
            "0": "background",
            "1": "necrotic tumour core (NCR)",
            "2": "peritumoral oedema (ED)",
            "4": "enhancing tumour (ET)",
        },
        case_id="BraTS_phantom_{:05d}",
        case_files=_brats_files,
    ),
    "head_neck_petct": PhantomKind(
        name="head_neck_petct",
        description="Digital phantom: HECKTOR-style head-and-neck FDG PET-CT (PET on its own coarser grid) with a GTVp",
        generate=head_neck_petct_phantom,
        field_of_view_mm=(200.0, 200.0, 160.0),
        modalities=PETCT_MODALITIES,
        labels={"0": "background", "1": "GTV (primary tumour)"},
        case_id="HN_phantom_{:03d}",
        case_files=_hecktor_files,
        modality_names=HECKTOR_MODALITIES,
    ),
    "thorax_ct": PhantomKind(
        name="thorax_ct",
        description="Digital phantom: NSCLC-Radiomics-style chest CT (HU, with couch), lung tumour(s), organ masks",
        generate=thorax_ct_phantom,
        field_of_view_mm=(350.0, 350.0, 300.0),
        modalities=("ct",),
        labels={},
        case_id="LUNG_phantom_{:03d}",
        modality_names=("CT",),
        write_case=_structure_files,
        structures=THORAX_STRUCTURES,
    ),
}
"""Registered phantom kinds by name; bundles add theirs here."""


PHANTOM_ALIASES: dict[str, str] = {
    "semantic_mri": "whole_head_mri",
    "semantic_mri_brats": "brats_mri",
    "paired_petct": "head_neck_petct",
    "latent_ct": "thorax_ct",
}
"""Bundle (variant) names that select a registered kind."""


def get_phantom_kind(kind: str) -> PhantomKind:
    """The registered ``PhantomKind`` for a kind name or alias; ``ValueError`` listing the known ones otherwise."""
    name = PHANTOM_ALIASES.get(kind, kind)
    if name not in PHANTOM_KINDS:
        known = sorted([*PHANTOM_KINDS, *PHANTOM_ALIASES])
        raise ValueError(f"kind must be one of {known}, got {kind!r}")
    return PHANTOM_KINDS[name]


def _write_cases(phantom: PhantomKind, folder: Path, n: int, grid: tuple, seed: int, first: int = 0) -> list[dict]:
    """Generate and save cases first..first+n-1 into ``folder``; case ``i`` draws from ``default_rng((seed, i))``.

    Images take their affine from ``PhantomCase.affines`` where the case gives one, else the grid's. A kind with a
    ``write_case`` writes its cases itself.
    """
    affine = phantom_affine(*grid)
    entries = []
    for index in range(first, first + n):
        case_id = phantom.case_id.format(index)
        case = phantom.generate(*grid, np.random.default_rng((seed, index)))
        if phantom.write_case is not None:
            entries.append(phantom.write_case(case, case_id, folder, affine))
            continue
        image_files, label_file = phantom.case_files(case_id)
        for modality, image_file in zip(phantom.modalities, image_files):
            atomic_write_nifti(case.images[modality][None], case.affines.get(modality, affine), folder / image_file)
        atomic_write_nifti(case.label[None], affine, folder / label_file)
        entries.append({"image": image_files if len(image_files) > 1 else image_files[0], "label": label_file})
    return entries


def write_phantom_dataset(
    kind: str,
    out_dir: str | Path,
    n: int = 8,
    size: int = 64,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    first: int = 0,
) -> Path:
    """Write ``n`` phantom cases of ``kind`` as NIfTI (float32 images, uint8 labels) plus a decathlon ``dataset.json``.

    Layout: whole head ``imagesTr/head_000.nii.gz`` + ``labelsTr/head_000.nii.gz``; BraTS
    ``BraTS_phantom_00000/BraTS_phantom_00000_{t1,t1ce,t2,flair,seg}.nii.gz``; head-and-neck PET-CT (HECKTOR 2022)
    ``imagesTr/HN_phantom_000__{CT,PT}.nii.gz`` + ``labelsTr/HN_phantom_000.nii.gz``; thorax CT
    ``LUNG_phantom_000/ct.nii.gz`` + ``LUNG_phantom_000/masks/<structure>.nii.gz`` (uint8, one per structure of the
    case), its ``dataset.json`` entries ``{"case_id", "image", "masks": {structure: path}}`` and a ``structures``
    list instead of ``labels``. Case ``i`` uses the random stream ``(seed, i)``, so it does not depend on ``n``;
    ``first`` > 0 writes cases ``first .. first + n - 1`` (more cases of the same population, e.g. a held-out test
    set beside the training set written with ``first`` 0). Files carry a RAS affine centred on the origin (see
    ``phantom_affine``) on the grid from ``phantom_grid(kind, size, shape, spacing)``, except images on a grid of
    their own (the PET of ``head_neck_petct``), which carry the case's affine for them (``PhantomCase.affines``).

    Writing is atomic: everything goes to a temporary sibling folder that is renamed to ``out_dir`` at the end.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty (it is left untouched).
        ValueError: unknown ``kind``, ``n`` < 1, ``first`` < 0, or a bad grid.
    """
    phantom = get_phantom_kind(kind)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 case, got {n}")
    if int(first) < 0:
        raise ValueError(f"first must be a case index >= 0, got {first}")
    grid = phantom_grid(kind, size, shape, spacing)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as staging:
        entries = _write_cases(phantom, staging, int(n), grid, int(seed), int(first))
        description = {
            "name": phantom.name,
            "description": phantom.description,
            "modality": {str(i): name for i, name in enumerate(phantom.modality_names or phantom.modalities)},
            **({"labels": phantom.labels} if phantom.labels else {}),
            **({"structures": list(phantom.structures)} if phantom.structures else {}),
            "numTraining": len(entries),
            "training": entries,
        }
        (staging / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return out_dir


def phantom_grid(
    kind: str, size: int = 64, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Grid (shape in voxels, spacing in mm) of a kind.

    By default the first axis has ``size`` voxels and the others keep the kind's field-of-view proportions
    (whole head: ``size``^3 over 192 mm; BraTS: ``(size, size, round(0.75 size))`` over 192 x 192 x 144 mm;
    head-and-neck PET-CT: ``(size, size, round(0.8 size))`` over 200 x 200 x 160 mm, the CT and label grid; thorax
    CT: ``(size, size, round(6 size / 7))`` over 350 x 350 x 300 mm).
    An explicit ``shape`` replaces that; an explicit ``spacing`` replaces ``field of view / shape``.
    """
    field_of_view = get_phantom_kind(kind).field_of_view_mm
    if shape is None:
        if int(size) < MIN_GRID_SIZE:
            raise ValueError(f"size must be >= {MIN_GRID_SIZE} voxels, got {size}")
        shape = [round(int(size) * fov / field_of_view[0]) for fov in field_of_view]
    shape = _check_shape(shape)
    if spacing is None:
        spacing = [fov / n for fov, n in zip(field_of_view, shape)]
    return shape, _check_spacing(spacing)
