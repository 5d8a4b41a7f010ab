"""Data pipeline of the ``paired_petct`` bundle: paired CT / PET / tumour-mask 2D slices from head-and-neck PET-CT.

Follows the paper's section 2.2 (HECKTOR 2022): every case is aligned by the world coordinates of its files (their
affines), CT is reoriented to RAS and resampled to 2 x 2 x 2 mm (trilinear), PET (trilinear) and the mask (nearest
neighbour) are resampled straight onto that grid, so each is interpolated once. Axial slices where tumour is visible
are cropped to 128 x 128 around the centre of mass of the body (a "smart crop" rather than the geometric centre) and
kept in memory. Training augments with random jitter, small rotations and a flip across the mid-sagittal plane; the
cases are split 80:10:10 by patient.

A *PET-CT case* is a dict ``{"case_id": str, "ct": path, "pet": path, "label": path}``. A training *item* is a dict
``{"ct", "pet", "mask": (1, H, W) float32 in [-1, 1], "case_id": str, "slice_index": int}`` (mask: -1 background,
+1 tumour; H runs along the patient's left-right axis, W along posterior-anterior).

Folder layouts understood by :func:`find_petct_cases`:

* ``hecktor``: ``imagesTr/<id>__CT.nii.gz``, ``imagesTr/<id>__PT.nii.gz`` and ``labelsTr/<id>.nii.gz`` (or ``.nii``);
* ``datalist``: a decathlon ``dataset.json`` whose ``training`` entries are ``{"ct", "pet", "label"}`` or
  ``{"image": [ct, pet], "label"}`` (channel order from its ``modality`` field, e.g. ``{"0": "CT", "1": "PT"}``,
  CT then PET without one), paths relative to the folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Orientation,
    ResampleToMatch,
    ScaleIntensityRange,
    Spacing,
)
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from common.data.datalist import datalist_content, read_datalist
from common.data.headers import check_petct_headers
from common.data.layouts import _nifti_files, case_id_from_path, require_cases
from common.transforms.crop import SmartCropd
from common.transforms.io import SafeLoadImaged
from common.transforms.validation import ValidateCase, checked_range

__all__ = [
    "PETCT_LAYOUTS",
    "PETCT_KEYS",
    "PetCtSettings",
    "find_petct_cases",
    "load_petct_case",
    "tumour_slices",
    "PairedSliceDataset",
]

logger = logging.getLogger(__name__)


PETCT_LAYOUTS = ("auto", "datalist", "hecktor")


PETCT_KEYS = ("ct", "pet", "mask")
"""Keys of a training item's image tensors, in the order CT, PET, mask."""


_HECKTOR_IMAGE = re.compile(r"^(?P<case>.+)__(?P<modality>CT|PT)$")


_PET_NAMES = ("PT", "PET")


# ---------------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PetCtSettings:
    """Preprocessing options of the paired PET-CT pipeline (one object, so configs set them in one place).

    Args:
        pixdim: voxel size (mm) of the common grid, RAS axes; paper: 2 x 2 x 2 mm.
        ct_window: CT intensities (HU) mapped linearly to [-1, 1], values outside clipped.
        pet_window: PET intensities (SUV) mapped linearly to [-1, 1], values outside clipped.
        allowed_mask_labels: label values a mask may contain; every non-zero one becomes tumour (+1). HECKTOR 2022
            masks hold 1 (primary tumour, GTVp) and 2 (lymph nodes, GTVn): use ``(0, 1, 2)`` for them.
        pet_max_range: (low, high) range the PET maximum must fall in, a unit check (SUV expected; a maximum of
            thousands looks like Bq/mL, a volume in exactly [0, 1] looks already normalised). ``None`` disables it.
        min_overlap: share of the CT field of view (world bounding box) the PET field of view must cover.
        min_tumour_voxels: tumour pixels an axial slice needs to be used for training (paper: tumour visible).
        roi_size: (H, W) of the smart crop in pixels of the common grid; paper: 128 x 128.
        body_threshold_hu: CT value (HU) above which a pixel belongs to the body, for the smart crop's centre of mass.
    """

    pixdim: tuple[float, float, float] = (2.0, 2.0, 2.0)
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    pet_window: tuple[float, float] = (0.0, 10.0)
    allowed_mask_labels: tuple[int, ...] = (0, 1)
    pet_max_range: tuple[float, float] | None = (0.5, 200.0)
    min_overlap: float = 0.5
    min_tumour_voxels: int = 1
    roi_size: tuple[int, int] = (128, 128)
    body_threshold_hu: float = -500.0

    def __post_init__(self) -> None:
        # configs give lists: store tuples so that the settings stay hashable and immutable
        pixdim = tuple(float(v) for v in self.pixdim)
        if len(pixdim) != 3 or min(pixdim) <= 0:
            raise ValueError(f"pixdim must be 3 positive voxel sizes in mm, got {self.pixdim}")
        roi_size = tuple(int(v) for v in self.roi_size)
        if len(roi_size) != 2 or min(roi_size) < 1:
            raise ValueError(f"roi_size must be 2 positive sizes in pixels, got {self.roi_size}")
        labels = tuple(sorted({int(v) for v in self.allowed_mask_labels}))
        if 0 not in labels or len(labels) < 2:
            raise ValueError(f"allowed_mask_labels must hold 0 (background) and a tumour label, got {labels}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap}")
        if int(self.min_tumour_voxels) < 1:
            raise ValueError(f"min_tumour_voxels must be >= 1, got {self.min_tumour_voxels}")
        pet_range = None if self.pet_max_range is None else checked_range(self.pet_max_range, "pet_max_range")
        values = {
            "pixdim": pixdim,
            "roi_size": roi_size,
            "allowed_mask_labels": labels,
            "ct_window": checked_range(self.ct_window, "ct_window"),
            "pet_window": checked_range(self.pet_window, "pet_window"),
            "pet_max_range": pet_range,
            "min_tumour_voxels": int(self.min_tumour_voxels),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def body_threshold(self) -> float:
        """``body_threshold_hu`` in the scaled CT units of ``ct_window`` (-500 HU -> -0.5 by default)."""
        low, high = self.ct_window
        return 2.0 * (float(self.body_threshold_hu) - low) / (high - low) - 1.0


# --------------------------------------------------------------------------------------------------- case discovery


def _hecktor_name(path: str | Path) -> tuple[str, str] | None:
    """(case id, "CT" or "PT") of a HECKTOR image file name ``<id>__CT.nii.gz``; None for other names."""
    match = _HECKTOR_IMAGE.match(case_id_from_path(path))
    return (match["case"], match["modality"]) if match else None


def _id_of_modality(modality: str) -> Callable[[Path], str | None]:
    """Key for :func:`_files_by_id`: the case id of a HECKTOR image file of ``modality``, None for other files."""

    def case_id(path: Path) -> str | None:
        named = _hecktor_name(path)
        return named[0] if named is not None and named[1] == modality else None

    return case_id


def _files_by_id(paths: list[Path], key: Callable[[Path], str | None], folder: Path) -> dict[str, str]:
    """Map case ids to paths; ``key(path)`` gives the id (None skips the file). Two files of one id are an error."""
    found: dict[str, str] = {}
    for path in paths:
        case_id = key(path)
        if case_id is None:
            continue
        if case_id in found:
            raise ValueError(f"'{folder}': case '{case_id}' has two files, '{found[case_id]}' and '{path}'")
        found[case_id] = str(path)
    return found


def _cases_from_hecktor(root: Path, config_key: str) -> list[dict[str, str]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not labels_dir.is_dir():
        raise ValueError(f"config key '{config_key}': '{root}' has imagesTr/ but no labelsTr/ folder of tumour masks")
    images = _nifti_files(images_dir)
    ct, pet = (_files_by_id(images, _id_of_modality(modality), images_dir) for modality in ("CT", "PT"))
    labels = _files_by_id(_nifti_files(labels_dir), case_id_from_path, labels_dir)
    problems = {
        "CT without PET": set(ct) - set(pet),
        "PET without CT": set(pet) - set(ct),
        "images without a label": (set(ct) | set(pet)) - set(labels),
        "labels without images": set(labels) - set(ct) - set(pet),
    }
    problems = {name: sorted(ids) for name, ids in problems.items() if ids}
    if problems:
        listed = "; ".join(f"{name}: {ids[:10]}" for name, ids in problems.items())
        raise ValueError(
            f"config key '{config_key}': CT, PET and label files in '{root}' do not pair up by case id (expected "
            f"imagesTr/<id>__CT.nii.gz, imagesTr/<id>__PT.nii.gz and labelsTr/<id>.nii.gz for every id): {listed}"
        )
    return [{"case_id": i, "ct": ct[i], "pet": pet[i], "label": labels[i]} for i in sorted(ct)]


def _channel_order(content: dict[str, Any], datalist: Path) -> tuple[int, int, int]:
    """(CT channel, PET channel, channel count) of ``image`` lists, from the datalist's ``modality`` field."""
    modality = content.get("modality")
    if modality is None:
        return 0, 1, 2
    names = {str(k): str(v).upper() for k, v in modality.items()} if isinstance(modality, dict) else {}
    ct = [k for k, v in names.items() if v == "CT"]
    pet = [k for k, v in names.items() if v in _PET_NAMES]
    if len(ct) != 1 or len(pet) != 1 or not all(k.isdigit() for k in names):
        raise ValueError(
            f"datalist '{datalist}': 'modality' must map channel numbers to names with one 'CT' and one 'PT' "
            f"(e.g. {{'0': 'CT', '1': 'PT'}}), found {modality}"
        )
    return int(ct[0]), int(pet[0]), len(names)


def _ct_and_pet(entry: Mapping[str, Any], order: tuple[int, int, int]) -> tuple[str, str] | None:
    """The (CT, PET) paths of a datalist entry: its ``ct``/``pet`` keys or its ``image`` list; None if neither."""
    ct_channel, pet_channel, channels = order
    images = entry.get("image")
    if "ct" in entry and "pet" in entry:
        return entry["ct"], entry["pet"]
    if isinstance(images, list) and len(images) == channels:
        return images[ct_channel], images[pet_channel]
    return None


def _entry_form(order: tuple[int, int, int]) -> str:
    """How a PET-CT datalist entry looks, for error messages."""
    ct_channel, pet_channel, channels = order
    return (
        f"{{'ct': ..., 'pet': ..., 'label': ...}} or {{'image': [{channels} paths, CT channel {ct_channel}, PET "
        f"channel {pet_channel}], 'label': ...}}"
    )


def _entry_check(order: tuple[int, int, int]) -> Callable[[Mapping[str, Any], str], None]:
    """Check of a raw datalist entry for :func:`read_datalist`: CT and PET are there, named for the entry's case."""

    def check(entry: Mapping[str, Any], where: str) -> None:
        pair = _ct_and_pet(entry, order)
        if pair is None or not all(isinstance(path, str) for path in pair):
            raise ValueError(f"{where}: expected {_entry_form(order)}, found {entry}")
        case_id = str(entry.get("case_id", case_id_from_path(entry["label"])))
        for path, expected in zip(pair, ("CT", "PT")):
            named = _hecktor_name(path)
            if named is not None and named != (case_id, expected):
                raise ValueError(
                    f"{where} (case '{case_id}'): {expected} entry '{path}' is named for case '{named[0]}' modality "
                    f"'{named[1]}'; expected '{case_id}__{expected}' (pairing is by case id)"
                )

    return check


def _cases_from_datalist(datalist: Path) -> list[dict[str, str]]:
    order = _channel_order(datalist_content(datalist), datalist)
    entries = read_datalist(
        datalist,
        ("label",),
        path_keys=("ct", "pet", "image", "label"),
        check_files=True,
        expected=_entry_form(order),
        check_entry=_entry_check(order),
    )
    cases = []
    for entry in entries:
        ct, pet = _ct_and_pet(entry, order)
        case_id = str(entry.get("case_id", case_id_from_path(entry["label"])))
        cases.append({"case_id": case_id, "ct": ct, "pet": pet, "label": entry["label"]})
    return cases


def _has_training_list(datalist: Path) -> bool:
    try:
        return "training" in datalist_content(datalist)
    except ValueError:
        return False


def find_petct_cases(
    dataset_dir: str | Path, layout: str = "auto", config_key: str = "dataset_dir"
) -> list[dict[str, str]]:
    """List the PET-CT cases of ``dataset_dir``, CT, PET and mask paired by case id (never by sort order).

    Args:
        dataset_dir: dataset folder.
        layout: one of :data:`PETCT_LAYOUTS`. ``auto`` reads ``dataset.json`` when it has a ``training`` list, else
            the ``imagesTr/`` + ``labelsTr/`` folders (see the module docstring).
        config_key: config key named in error messages.

    Returns:
        Cases ``{"case_id", "ct", "pet", "label"}`` (absolute path strings when ``dataset_dir`` is absolute).

    Raises:
        FileNotFoundError: the folder does not exist; a file listed in ``dataset.json`` does not exist.
        ValueError: unknown layout; empty folder or no cases; CT, PET and labels that do not pair up (the ids are
            listed); two files for one id; duplicate case ids; a malformed ``dataset.json``.
    """
    if layout not in PETCT_LAYOUTS:
        raise ValueError(f"layout must be one of {PETCT_LAYOUTS}, got '{layout}'")
    root = Path(dataset_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"config key '{config_key}': dataset folder '{root}' does not exist")
    datalist = root / "dataset.json"
    use_datalist = layout == "datalist" or (
        layout == "auto" and datalist.is_file() and (_has_training_list(datalist) or not (root / "imagesTr").is_dir())
    )
    if use_datalist:
        cases = _cases_from_datalist(datalist)
    elif (root / "imagesTr").is_dir():
        cases = _cases_from_hecktor(root, config_key)
    else:
        cases = []
    expected = "a dataset.json datalist or imagesTr/<id>__CT.nii.gz + imagesTr/<id>__PT.nii.gz + labelsTr/<id>.nii.gz"
    require_cases(cases, root, "PET-CT cases", expected, f"layout '{layout}'", config_key)
    return cases


# --------------------------------------------------------------------------------------------- loading a 3D case


def _read_volume(path: str) -> torch.Tensor:
    """Read one file as a (1, X, Y, Z) float32 MetaTensor with finite voxels; errors name the file."""
    image = SafeLoadImaged(
        keys="volume", reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32
    )({"volume": path})["volume"]
    ValidateCase(num_channels=1, label_values=[0]).check_image(image)
    return image


def _format_values(values: np.ndarray) -> list[int | float]:
    return [int(v) if float(v).is_integer() else round(float(v), 4) for v in values]


def _check_mask_labels(mask: torch.Tensor, path: str, allowed: Sequence[int]) -> None:
    found = np.unique(mask.numpy())
    if not set(found.tolist()) <= {float(v) for v in allowed}:
        raise ValueError(
            f"mask '{path}': found labels {_format_values(found)[:20]}, allowed labels are {list(allowed)} (setting "
            "allowed_mask_labels; every non-zero allowed label counts as tumour)"
        )


def _check_pet_units(pet: torch.Tensor, path: str, value_range: tuple[float, float] | None) -> None:
    if value_range is None:
        return
    low, high = value_range
    maximum, minimum = float(pet.max()), float(pet.min())
    if maximum > high:
        reason = (
            f"maximum {maximum:g} is above {high:g}: this looks like activity concentration (Bq/mL), convert to SUV"
        )
    elif maximum < low:
        reason = f"maximum {maximum:g} is below {low:g}: the PET looks already normalised, or empty"
    elif minimum == 0.0 and maximum == 1.0:
        reason = "values span exactly [0, 1]: the PET looks already normalised (the pipeline windows SUV itself)"
    else:
        return
    raise ValueError(
        f"PET '{path}': {reason}; expected SUV with a maximum in {list(value_range)} (setting pet_max_range, None "
        "disables the check)"
    )


def load_petct_case(case: Mapping[str, str], settings: PetCtSettings | None = None) -> dict[str, Any]:
    """Validate one PET-CT case and bring CT, PET and mask onto one RAS grid of ``settings.pixdim`` spacing.

    Header checks (:func:`check_petct_headers`) run before any voxel is read. CT is reoriented to RAS and resampled
    to ``pixdim`` (trilinear, MONAI ``Orientation`` + ``Spacing``); PET (trilinear, zero SUV outside its field of
    view) and the mask (nearest neighbour) are resampled onto that grid by their affines (MONAI ``ResampleToMatch``),
    i.e. aligned by world coordinates. CT and PET are clipped to their windows and mapped to [-1, 1]; the mask becomes
    -1 (background) / +1 (any non-zero label).

    Args:
        case: ``{"case_id", "ct", "pet", "label"}`` as listed by :func:`find_petct_cases`.
        settings: preprocessing options; default ``PetCtSettings()``.

    Returns:
        ``{"case_id": str, "ct", "pet", "mask": (X, Y, Z) float32 arrays, "affine": (4, 4) float64 RAS affine}``;
        axis 0 increases towards the patient's right (R), axis 1 anterior, axis 2 (axial slices) superior.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: unreadable or corrupt file, NaN/inf voxels (with their count), mask labels outside
            ``allowed_mask_labels``, a PET maximum outside ``pet_max_range``, fields of view that do not overlap.
    """
    settings = settings or PetCtSettings()
    check_petct_headers(case, settings.min_overlap)
    ct, pet, mask = (_read_volume(case[role]) for role in ("ct", "pet", "label"))
    _check_mask_labels(mask, case["label"], settings.allowed_mask_labels)
    _check_pet_units(pet, case["pet"], settings.pet_max_range)
    ct = Spacing(settings.pixdim, mode="bilinear")(Orientation(axcodes="RAS", labels=None)(ct))
    pet = ResampleToMatch(mode="bilinear", padding_mode="zeros")(pet, ct)
    mask = ResampleToMatch(mode="nearest", padding_mode="zeros")(mask, ct)
    ct_scaled = ScaleIntensityRange(*settings.ct_window, b_min=-1.0, b_max=1.0, clip=True)(ct)
    pet_scaled = ScaleIntensityRange(*settings.pet_window, b_min=-1.0, b_max=1.0, clip=True)(pet)
    tumour = torch.where(torch.as_tensor(mask) != 0, 1.0, -1.0)
    return {
        "case_id": case["case_id"],
        "ct": _array(ct_scaled),
        "pet": _array(pet_scaled),
        "mask": _array(tumour),
        "affine": np.asarray(ct.affine, dtype=np.float64),
    }


def _array(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(image)[0].numpy(), dtype=np.float32)


def tumour_slices(mask: np.ndarray | torch.Tensor, min_voxels: int = 1) -> list[int]:
    """Indices of the axial slices (last axis) of a (X, Y, Z) mask with at least ``min_voxels`` tumour (> 0) pixels."""
    counts = (torch.as_tensor(mask) > 0).flatten(0, -2).sum(dim=0)
    return [int(z) for z in torch.nonzero(counts >= min_voxels).flatten()]


# --------------------------------------------------------------------------------------------------------- dataset


class PairedSliceDataset(Dataset):
    """In-memory dataset of smart-cropped axial tumour slices of PET-CT cases.

    Every case is loaded once at construction (:func:`load_petct_case`), its slices with at least
    ``settings.min_tumour_voxels`` tumour pixels are selected and cropped to ``settings.roi_size`` around the body's
    centre of mass (:class:`SmartCropd`, tumour kept inside), and only the 2D crops are kept.

    Args:
        data: PET-CT cases ``{"case_id", "ct", "pet", "label"}`` (bundle configs: ``train#dataset#data``).
        settings: preprocessing options; default ``PetCtSettings()``.
        transform: optional callable on an item dict, e.g. :func:`petct_augmentation`.
        cache_dtype: dtype of the cached crops (``torch.float16`` halves the memory); items are float32.

    Items: ``{"ct", "pet", "mask": (1, H, W) float32 in [-1, 1], "case_id": str, "slice_index": int}``, fresh
    tensors each time.

    Raises:
        ValueError: ``data`` is empty or no case has a tumour slice (the cases are listed); the errors of
            :func:`load_petct_case`. A case without tumour slices is skipped with a warning.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, str]],
        settings: PetCtSettings | None = None,
        transform: Any = None,
        cache_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not data:
            raise ValueError("data must hold at least one PET-CT case, got none")
        self.settings = settings or PetCtSettings()
        self.transform = transform
        cropper = SmartCropd(PETCT_KEYS, "ct", self.settings.roi_size, self.settings.body_threshold, keep_key="mask")
        crops: dict[str, list[torch.Tensor]] = {key: [] for key in PETCT_KEYS}
        self.index: list[tuple[str, int]] = []
        without_tumour = []
        for case in data:
            volume = load_petct_case(case, self.settings)
            slices = tumour_slices(volume["mask"], self.settings.min_tumour_voxels)
            if not slices:
                logger.warning(
                    f"case '{case['case_id']}' ('{case['label']}') has no axial slice with >= "
                    f"{self.settings.min_tumour_voxels} tumour voxel(s): skipped"
                )
                without_tumour.append(case["case_id"])
            for z in slices:
                item = cropper({key: torch.from_numpy(volume[key][None, :, :, z].copy()) for key in PETCT_KEYS})
                for key in PETCT_KEYS:
                    crops[key].append(convert_to_tensor(item[key], dtype=cache_dtype, track_meta=False))
                self.index.append((case["case_id"], z))
        if not self.index:
            raise ValueError(
                f"none of the {len(data)} case(s) has an axial slice with >= {self.settings.min_tumour_voxels} "
                f"tumour voxel(s) (setting min_tumour_voxels); cases: {without_tumour[:20]}"
            )
        self.crops = {key: torch.stack(values) for key, values in crops.items()}
        logger.info(
            f"PairedSliceDataset: {len(self.index)} tumour slice(s) of {tuple(self.settings.roi_size)} pixels from "
            f"{len(data) - len(without_tumour)} of {len(data)} case(s)"
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, slice_index = self.index[index]
        item: dict[str, Any] = {key: self.crops[key][index].to(torch.float32, copy=True) for key in PETCT_KEYS}
        item.update(case_id=case_id, slice_index=slice_index)
        return self.transform(item) if self.transform is not None else item
