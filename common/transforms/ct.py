"""CT cases with RTSTRUCT-style structure masks: discovery, name matching, mask merging, table removal, HU checks.

The ``latent_ct`` bundle reads chest CTs (NSCLC-Radiomics style) stored as one CT file and one binary mask file per
delineated structure (see :func:`find_ct_cases` for the layout). Real exports name the same structure in many ways
(``GTV-1``, ``GTV_1``, ``gtv1``; ``Lung-Left``, ``Lung_L``, ``Left Lung``), a case may hold several tumours
(``GTV-2``, ``GTV-3``, ...) and some cases lack a structure. :class:`MergeSegmentationd` turns whatever a case has
into fixed tensors (primary tumour, union of the secondary tumours, one channel per configured structure) through a
synonym table (:data:`DEFAULT_STRUCTURE_SYNONYMS`) that a config can replace.

CT scans also show the patient couch, which a generative model would otherwise learn as anatomy:
:class:`IsolateBodyd` keeps the body (threshold, largest connected component, holes filled) and sets the rest to
air. :class:`CheckHURanged` stops, with the file named, a volume that is not in Hounsfield units (already
normalised, raw stored values, NaN).

The opening, connected-component and hole-filling steps are those of :mod:`common.transforms.morphology`
(``scipy.ndimage``), shared with the lesion read-back rule of the benchmarks.

Transforms come as array ``Transform`` (where natural) and dictionary ``MapTransform`` with ``d``/``D``/``Dict``
aliases, as in MONAI itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from common.transforms.io import SafeLoadImaged, source_name
from common.transforms.morphology import binary_opening, fill_holes, largest_component
from common.transforms.validation import checked_range

__all__ = [
    "DEFAULT_STRUCTURES",
    "DEFAULT_STRUCTURE_SYNONYMS",
    "normalise_structure_name",
    "StructureSynonyms",
    "LoadStructureMasksd",
    "MergeSegmentationd",
    "IsolateBody",
    "IsolateBodyd",
    "CheckHURange",
    "CheckHURanged",
    "LoadStructureMasksD",
    "LoadStructureMasksDict",
    "MergeSegmentationD",
    "MergeSegmentationDict",
    "IsolateBodyD",
    "IsolateBodyDict",
    "CheckHURangeD",
    "CheckHURangeDict",
    "AppendMaskChanneld",
    "AppendMaskChannelD",
    "read_mask_channel",
    "AppendMaskChannelDict",
]

logger = logging.getLogger(__name__)


DEFAULT_STRUCTURES: tuple[str, ...] = ("Lung-Left", "Lung-Right", "Heart", "Esophagus", "Spinal-Cord")
"""Organ channels of :class:`MergeSegmentationd` by default (NSCLC-Radiomics organs at risk)."""


DEFAULT_STRUCTURE_SYNONYMS: dict[str, list[str]] = {
    "GTV-1": ["GTV1", "GTV_1", "gtv-1", "GTV-Primary", "GTV Primary", "GTVp", "GTV"],
    "Lung-Left": ["Lung_L", "LUNG_L", "Left Lung", "lung-left", "LungL", "L Lung", "Lung Lt", "Lt Lung", "Lung_Left"],
    "Lung-Right": [
        "Lung_R",
        "LUNG_R",
        "Right Lung",
        "lung-right",
        "LungR",
        "R Lung",
        "Lung Rt",
        "Rt Lung",
        "Lung_Right",
    ],
    "Heart": ["HEART", "heart", "Cor", "Heart_NOS"],
    "Esophagus": ["Oesophagus", "ESOPHAGUS", "Esophag", "Oesophag", "Esoph", "Esophagus_NOS"],
    "Spinal-Cord": ["SpinalCord", "Spinal Cord", "Spinal_Cord", "Cord", "SPINAL_CORD", "Myelon", "SpinalCanal"],
    "Airway": ["Airways", "Trachea-Bronchi"],
    "Body": ["External", "Outline", "Skin", "BODY"],
}
"""Canonical structure name -> other spellings. Matching ignores case, spaces, ``_`` and ``-``, so one spelling covers
``Lung_L``, ``lung l`` and ``LUNG-L``. Secondary tumours (``GTV-2``, ``GTV3``, ``gtv_12``, ...) need no entry: every
``GTV`` followed by a number from 2 up is one (see :class:`StructureSynonyms`)."""


_SEPARATORS = re.compile(r"[\s_\-]+")


_SECONDARY_GTV = re.compile(r"^gtv0*(?P<number>[2-9]|[1-9]\d+)$")


# ------------------------------------------------------------------------------------------------ structure names


def normalise_structure_name(name: str) -> str:
    """Matching key of a structure name: lower case without spaces, ``_`` and ``-`` (``"Lung_L"`` -> ``"lungl"``)."""
    return _SEPARATORS.sub("", str(name)).lower()


class StructureSynonyms:
    """Maps the many spellings of structure names to canonical names.

    Each canonical name matches itself and its listed synonyms, ignoring case, spaces, ``_`` and ``-``. Names not in
    the table that read ``GTV`` followed by a number from 2 up (``GTV-2``, ``gtv_3``, ``GTV12``) are secondary
    tumours with canonical name ``GTV-<number>``.

    Args:
        table: canonical name -> list of synonyms (a single string is one synonym), e.g. from a YAML config.
            Default: :data:`DEFAULT_STRUCTURE_SYNONYMS`.

    Raises:
        ValueError: the table is not a mapping of names to lists of names, or one spelling belongs to two canonical
            names.
    """

    def __init__(self, table: Mapping[str, Sequence[str] | str] | None = None) -> None:
        table = DEFAULT_STRUCTURE_SYNONYMS if table is None else table
        if not isinstance(table, Mapping) or not table:
            raise ValueError(f"synonym table must be a non-empty mapping {{canonical name: [synonyms]}}, got {table!r}")
        self._lookup: dict[str, str] = {}
        for canonical, synonyms in table.items():
            spellings = [synonyms] if isinstance(synonyms, str) else synonyms
            if not isinstance(canonical, str) or not isinstance(spellings, Sequence):
                raise ValueError(
                    f"synonym table entry {canonical!r}: expected a name and a list of names, got {synonyms!r}"
                )
            for spelling in [canonical, *spellings]:
                key = normalise_structure_name(spelling)
                if not key:
                    raise ValueError(f"synonym table entry '{canonical}': empty spelling {spelling!r}")
                if self._lookup.get(key, canonical) != canonical:
                    raise ValueError(
                        f"synonym table: spelling '{spelling}' matches both '{self._lookup[key]}' and '{canonical}'"
                    )
                self._lookup[key] = canonical
        self.names: tuple[str, ...] = tuple(table)
        """The canonical names of the table, in its order."""

    def canonical(self, name: str) -> str | None:
        """Canonical name of ``name``: a table entry, ``GTV-<n>`` for a secondary tumour, ``None`` when unknown."""
        key = normalise_structure_name(name)
        if key in self._lookup:
            return self._lookup[key]
        match = _SECONDARY_GTV.match(key)
        return f"GTV-{int(match['number'])}" if match else None

    def is_secondary(self, name: str) -> bool:
        """Whether ``name`` is a secondary tumour (GTV-2, GTV-3, ...) and no table entry."""
        key = normalise_structure_name(name)
        return key not in self._lookup and _SECONDARY_GTV.match(key) is not None


# --------------------------------------------------------------------------------------------- loading and merging


def _as_synonyms(synonyms: StructureSynonyms | Mapping[str, Sequence[str]] | None) -> StructureSynonyms:
    return synonyms if isinstance(synonyms, StructureSynonyms) else StructureSynonyms(synonyms)


class LoadStructureMasksd(MapTransform):
    """Load the structure masks of a case: ``data[key]`` ``{name: path}`` becomes ``{name: MetaTensor (1, H, W, D)}``.

    Uses MONAI's ``LoadImage`` (through :class:`common.transforms.io.SafeLoadImaged`, whose errors name the file), so
    each mask keeps its affine and file name. Values that are already arrays or tensors are kept as they are.

    Args:
        keys: keys holding the ``{structure name: path}`` dicts (the ``masks`` of :func:`find_ct_cases`).
        reader: MONAI image reader. Default ``"NibabelReader"``.
        dtype: voxel type of the loaded masks. Default float32.
        allow_missing_keys: skip keys that are absent.

    Raises:
        ValueError: ``data[key]`` is not a mapping, a value is neither a path nor an array, a file cannot be read.
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        reader: str = "NibabelReader",
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = SafeLoadImaged(
            keys="mask", reader=reader, image_only=True, ensure_channel_first=True, dtype=dtype
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            masks = d[key]
            if not isinstance(masks, Mapping):
                raise ValueError(f"'{key}': expected a mapping {{structure name: path}}, found {type(masks).__name__}")
            loaded = {}
            for name, value in masks.items():
                if isinstance(value, (str, os.PathLike)):
                    loaded[name] = self.loader({"mask": str(value)})["mask"]
                elif isinstance(value, (np.ndarray, torch.Tensor)):
                    loaded[name] = value
                else:
                    raise ValueError(f"'{key}': mask '{name}' must be a path or an array, found {type(value).__name__}")
            d[key] = loaded
        return d


def _spatial_shape(image: Any, name: str) -> tuple[int, ...]:
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[0] == 1:
        return shape[1:]
    if len(shape) == 3:
        return shape
    raise ValueError(f"CT '{name}': expected shape (1, H, W, D) or (H, W, D), found {shape}")


class MergeSegmentationd(MapTransform):
    """Turn a case's structure masks, whatever their names, into fixed tensors for training.

    Reads the CT ``data[image_key]`` and its masks ``data[masks_key]`` (``{raw name: array (1, H, W, D) or (H, W, D)}``,
    e.g. from :class:`LoadStructureMasksd`) and writes, each float32 0/1 with the CT's metadata (affine, file name):

    - ``data[gtv1_key]``: (1, H, W, D) primary tumour (union of the masks whose name maps to ``primary``);
    - ``data[secondary_key]``: (1, H, W, D) union of all secondary tumours (GTV-2, GTV-3, ...), zeros when none;
    - ``data[structures_key]``: (S, H, W, D), one channel per name of ``structures`` (several spellings of one
      structure are merged); not written when ``structures`` is empty.

    A structure of ``structures`` (or the primary tumour) that the case lacks gives a zero channel and one warning
    naming the case. Names the synonym table does not know are ignored with one warning per case that lists them;
    known names that are not asked for are ignored silently.

    Args:
        image_key: key of the loaded CT, the reference grid.
        masks_key: key of the ``{name: mask}`` dict; removed from the output when ``drop_masks``.
        structures: canonical names of the organ channels, in order. Default :data:`DEFAULT_STRUCTURES`.
        synonyms: a :class:`StructureSynonyms` or its table (a plain dict, e.g. from a YAML config). Default
            :data:`DEFAULT_STRUCTURE_SYNONYMS`.
        gtv1_key, secondary_key, structures_key: output keys.
        case_key: key of the case id used in messages (the CT's file name when absent).
        primary: canonical name of the primary tumour.
        require_primary: a case without the primary tumour is an error instead of a warning.
        drop_masks: remove ``masks_key`` (its names differ between cases, which batch collation cannot handle).
        atol: tolerance when comparing mask and CT affines (both MetaTensors).

    Raises:
        ValueError: at construction, a name of ``structures`` or ``primary`` that is not in the table, or duplicates;
            when called, a mask whose shape or affine differs from the CT's, with NaN, or with values other than 0
            and 1 (structure, file and case named); a missing primary tumour with ``require_primary``.
    """

    def __init__(
        self,
        image_key: str = "image",
        masks_key: str = "masks",
        structures: Sequence[str] = DEFAULT_STRUCTURES,
        synonyms: StructureSynonyms | Mapping[str, Sequence[str]] | None = None,
        gtv1_key: str = "gtv1",
        secondary_key: str = "secondary",
        structures_key: str = "structures",
        case_key: str = "case_id",
        primary: str = "GTV-1",
        require_primary: bool = False,
        drop_masks: bool = True,
        atol: float = 1e-2,
    ) -> None:
        super().__init__([image_key, masks_key])
        self.synonyms = _as_synonyms(synonyms)
        self.structures = [str(name) for name in structures]
        unknown = [name for name in [primary, *self.structures] if name not in self.synonyms.names]
        if unknown:
            raise ValueError(
                f"structures {unknown} are not canonical names of the synonym table {list(self.synonyms.names)}"
            )
        if len(set(self.structures)) != len(self.structures) or primary in self.structures:
            raise ValueError(f"structures must be distinct and exclude the primary '{primary}', got {self.structures}")
        self.image_key, self.masks_key, self.case_key = image_key, masks_key, case_key
        self.gtv1_key, self.secondary_key, self.structures_key = gtv1_key, secondary_key, structures_key
        self.primary, self.require_primary, self.drop_masks, self.atol = primary, require_primary, drop_masks, atol

    def _checked_mask(self, name: str, mask: Any, image: Any, shape: tuple[int, ...], case: str) -> torch.Tensor:
        """The mask as a bool (H, W, D) tensor after checking grid, NaN and binary values."""
        file = source_name(mask, fallback=f"{self.masks_key}['{name}']")
        where = f"case '{case}': mask '{name}' ('{file}')"
        data = torch.as_tensor(mask)
        if data.ndim == 4 and data.shape[0] == 1:
            data = data[0]
        if tuple(data.shape) != shape:
            raise ValueError(
                f"{where} has shape {tuple(torch.as_tensor(mask).shape)}; expected the CT's spatial shape {shape} "
                f"(CT '{source_name(image)}')"
            )
        both_meta = isinstance(mask, MetaTensor) and isinstance(image, MetaTensor)
        if both_meta and not torch.allclose(mask.affine.double(), image.affine.double(), atol=self.atol):
            raise ValueError(
                f"{where}: affine {mask.affine.tolist()} differs from the CT's {image.affine.tolist()} "
                f"(CT '{source_name(image)}'); masks must lie on the CT grid"
            )
        data = data.as_tensor() if isinstance(data, MetaTensor) else data
        if data.is_floating_point() and bool(torch.isnan(data).any()):
            raise ValueError(f"{where} has {int(torch.isnan(data).sum())} NaN voxel(s); expected a binary 0/1 mask")
        bad = (data != 0) & (data != 1)
        if bool(bad.any()):
            values = torch.unique(data[bad])[:5].tolist()
            raise ValueError(f"{where} has values other than 0 and 1 (e.g. {values}); expected a binary mask")
        return data == 1

    def _output(self, channels: list[torch.Tensor], image: Any) -> torch.Tensor:
        stacked = torch.stack(channels).to(torch.float32)
        if isinstance(image, MetaTensor):
            out = MetaTensor(stacked)
            out.copy_meta_from(image)
            return out
        return stacked

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image, masks = d[self.image_key], d[self.masks_key]
        case = str(d.get(self.case_key, source_name(image)))
        shape = _spatial_shape(image, source_name(image))
        if not isinstance(masks, Mapping):
            raise ValueError(
                f"case '{case}': '{self.masks_key}' must map structure names to masks, found {type(masks).__name__}"
            )
        device = image.device if isinstance(image, torch.Tensor) else None
        empty = torch.zeros(shape, dtype=torch.bool, device=device)
        merged: dict[str, torch.Tensor] = {}
        secondary = empty.clone()
        unknown = []
        for name, mask in masks.items():
            checked = self._checked_mask(str(name), mask, image, shape, case).to(empty.device)
            canonical = self.synonyms.canonical(str(name))
            if canonical is None:
                unknown.append(str(name))
            elif self.synonyms.is_secondary(str(name)):
                secondary |= checked
            elif canonical == self.primary or canonical in self.structures:
                merged[canonical] = merged[canonical] | checked if canonical in merged else checked
        if unknown:
            logger.warning(f"case '{case}': ignoring {len(unknown)} structure(s) not in the synonym table: {unknown}")
        missing = [name for name in [self.primary, *self.structures] if name not in merged]
        if self.primary in missing and self.require_primary:
            raise ValueError(
                f"case '{case}': no mask for the primary tumour '{self.primary}' (require_primary); found "
                f"{sorted(str(n) for n in masks)}"
            )
        if missing:
            logger.warning(f"case '{case}': no mask for {missing}; their channels are zero")
        d[self.gtv1_key] = self._output([merged.get(self.primary, empty)], image)
        d[self.secondary_key] = self._output([secondary], image)
        if self.structures:
            d[self.structures_key] = self._output([merged.get(name, empty) for name in self.structures], image)
        if self.drop_masks:
            del d[self.masks_key]
        return d


# -------------------------------------------------------------------------------------------------- body isolation


_FILL_MODES = ("slices", "volume", "none")


class IsolateBody(Transform):
    """Keep the patient's body on a CT in HU and set everything else (couch, clothes, noise) to air.

    The body is the largest 6-connected component of the voxels above ``threshold_hu`` (after an optional opening
    that cuts thin bridges such as couch supports or blankets), with its holes filled: lungs and airways lie inside
    it. Holes are filled per slice by default, because the lungs and the trachea reach the top and bottom of a chest
    scan and so are not holes of the 3D volume.

    Args:
        threshold_hu: voxels above this are body candidates. Default -500 HU (between air and fat).
        fill_hu: value given to voxels outside the body. Default -1000 HU (air).
        opening_radius: radius (voxels) of the cubic opening before the component search; 0 switches it off.
        fill_holes: ``"slices"`` (holes of each slice normal to ``slice_axis``), ``"volume"`` (3D holes) or
            ``"none"``.
        slice_axis: spatial axis (0, 1 or 2) normal to the slices; 2 is axial for RAS- or LPS-oriented volumes.

    Input (1, X, Y, Z) or (X, Y, Z), numpy or torch (MetaTensor metadata kept); output of the same type and shape.
    """

    def __init__(
        self,
        threshold_hu: float = -500.0,
        fill_hu: float = -1000.0,
        opening_radius: int = 0,
        fill_holes: str = "slices",
        slice_axis: int = 2,
    ) -> None:
        if fill_holes not in _FILL_MODES:
            raise ValueError(f"fill_holes must be one of {_FILL_MODES}, got '{fill_holes}'")
        if int(opening_radius) < 0:
            raise ValueError(f"opening_radius must be >= 0 voxels, got {opening_radius}")
        if int(slice_axis) not in (0, 1, 2):
            raise ValueError(f"slice_axis must be a spatial axis 0, 1 or 2, got {slice_axis}")
        self.threshold_hu, self.fill_hu = float(threshold_hu), float(fill_hu)
        self.opening_radius, self.fill_holes, self.slice_axis = int(opening_radius), fill_holes, int(slice_axis)

    def body_mask(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Boolean body mask of ``image``, shaped like it (a torch tensor on its device).

        Raises:
            ValueError: not one 3D volume; no voxel above ``threshold_hu`` (or none left after the opening).
        """
        name = source_name(image)
        data = torch.as_tensor(image)
        data = data.as_tensor() if isinstance(data, MetaTensor) else data
        channel = data.ndim == 4
        if not (data.ndim == 3 or (channel and data.shape[0] == 1)):
            raise ValueError(f"'{name}': expected one CT volume (1, X, Y, Z) or (X, Y, Z), found {tuple(data.shape)}")
        volume = data[0] if channel else data
        mask = volume > self.threshold_hu
        if not bool(mask.any()):
            raise ValueError(
                f"'{name}': no voxel above threshold_hu={self.threshold_hu:g} (values in [{float(volume.min()):g}, "
                f"{float(volume.max()):g}]); expected a CT in Hounsfield units with the patient in it"
            )
        if self.opening_radius:
            mask = binary_opening(mask, self.opening_radius)
            if not bool(mask.any()):
                raise ValueError(f"'{name}': the opening (radius {self.opening_radius} voxels) removed the whole body")
        mask = largest_component(mask)
        if self.fill_holes != "none":
            axes = None if self.fill_holes == "volume" else [a for a in (0, 1, 2) if a != self.slice_axis]
            mask = fill_holes(mask, axes=axes)
        return mask[None] if channel else mask

    def outside_to_air(self, image: np.ndarray | torch.Tensor, mask: torch.Tensor) -> np.ndarray | torch.Tensor:
        """A copy of ``image`` with ``fill_hu`` wherever the boolean ``mask`` (shaped like it) is False."""
        if isinstance(image, np.ndarray):
            return np.where(mask.cpu().numpy(), image, np.asarray(self.fill_hu, dtype=image.dtype))
        out = image.clone()
        out[~mask] = self.fill_hu
        return out

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return self.outside_to_air(image, self.body_mask(image))


def _update_keys(
    transform: MapTransform, data: Mapping[Hashable, Any], enabled: bool, update: Callable[[dict, Hashable], None]
) -> dict:
    """A copy of ``data`` with ``update(copy, key)`` applied for each of the transform's keys; untouched when not
    ``enabled`` (the config switch of :class:`IsolateBodyd` and :class:`AppendMaskChanneld`)."""
    d = dict(data)
    if enabled:
        for key in transform.key_iterator(d):
            update(d, key)
    return d


class IsolateBodyd(MapTransform):
    """Dictionary wrapper of :class:`IsolateBody`; optionally stores the body mask (uint8, the image's metadata).

    Args:
        keys: CT keys.
        body_key: key for the (1, X, Y, Z) body mask of the (single) key; ``None`` stores none.
        threshold_hu, fill_hu, opening_radius, fill_holes, slice_axis: see :class:`IsolateBody`.
        enabled: ``False`` passes the data through untouched (a config switch); no body mask is stored then.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        body_key: str | None = None,
        threshold_hu: float = -500.0,
        fill_hu: float = -1000.0,
        opening_radius: int = 0,
        fill_holes: str = "slices",
        slice_axis: int = 2,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if body_key is not None and len(self.keys) != 1:
            raise ValueError(f"body_key needs exactly one image key, got {list(self.keys)}")
        self.body_key, self.enabled = body_key, bool(enabled)
        self.isolator = IsolateBody(threshold_hu, fill_hu, opening_radius, fill_holes, slice_axis)

    def isolate(self, d: dict, key: Hashable) -> None:
        image = d[key]
        mask = self.isolator.body_mask(image)
        d[key] = self.isolator.outside_to_air(image, mask)
        if self.body_key is not None:
            body = mask.to(torch.uint8)
            if isinstance(image, MetaTensor):
                body = MetaTensor(body)
                body.copy_meta_from(image)
            d[self.body_key] = body

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return _update_keys(self, data, self.enabled, self.isolate)


# ------------------------------------------------------------------------------------------------- mask channel


def read_mask_channel(channel: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    """The binary mask (float 0 / 1) of a mask channel on an image's scale, as :class:`AppendMaskChanneld` wrote it
    (0 -> low, 1 -> high of ``value_range``) and a decoder gives it back: ``channel > (low + high) / 2``."""
    low, high = (float(v) for v in value_range)
    return (channel > 0.5 * (low + high)).to(channel.dtype if channel.is_floating_point() else torch.float32)


class AppendMaskChanneld(MapTransform):
    """Append the union of binary masks to an image as one more channel, on the image's intensity scale.

    ``data[key]`` (C, *spatial) becomes (C + 1, *spatial): the last channel is ``max(data[m] for m in mask_keys)``
    mapped from {0, 1} onto ``value_range`` (0 -> low, 1 -> high), so that an autoencoder sees the mask on the same
    scale as the image. A model trained on such pairs generates image and mask together (the ``latent_ct`` bundle's
    ``tumour_channel.yaml``: CT + tumour); decoding reads the mask back with :func:`read_mask_channel`.

    Args:
        keys: image keys.
        mask_keys: binary masks (1, *spatial) or (*spatial) on the image's grid (e.g. ``gtv1``, ``secondary``).
        value_range: the (low, high) the mask's 0 and 1 map to (the image's model range, e.g. (-1, 1)).
        enabled: ``False`` passes the data through untouched (a config switch).

    Raises:
        ValueError: ``mask_keys`` empty, ``value_range`` not (low, high) with high > low; when called, a mask missing
            (its key and the available keys named), of another spatial shape than the image, or not binary.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_keys: Sequence[str] = ("gtv1", "secondary"),
        value_range: Sequence[float] = (-1.0, 1.0),
        enabled: bool = True,
    ) -> None:
        super().__init__(keys)
        self.mask_keys = [str(k) for k in ([mask_keys] if isinstance(mask_keys, str) else mask_keys)]
        if not self.mask_keys:
            raise ValueError("AppendMaskChanneld: mask_keys must name at least one mask")
        self.low, self.high = checked_range(value_range, "AppendMaskChanneld: value_range")
        self.enabled = bool(enabled)

    def union(self, data: Mapping[Hashable, Any], shape: tuple[int, ...]) -> torch.Tensor:
        """The masks' union as a (1, *shape) float tensor of 0 and 1 (checked)."""
        union = torch.zeros((1, *shape))
        for key in self.mask_keys:
            if key not in data:
                raise ValueError(
                    f"AppendMaskChanneld: mask key '{key}' is missing; the data has {sorted(map(str, data))}"
                )
            mask = torch.as_tensor(data[key]).float()
            mask = mask[0] if mask.ndim == len(shape) + 1 and mask.shape[0] == 1 else mask
            if tuple(mask.shape) != shape:
                raise ValueError(
                    f"AppendMaskChanneld: mask '{key}' ('{source_name(data[key], fallback=key)}') has spatial shape "
                    f"{tuple(mask.shape)}; expected the image's {shape}"
                )
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError(
                    f"AppendMaskChanneld: mask '{key}' ('{source_name(data[key], fallback=key)}') has values other "
                    "than 0 and 1"
                )
            union = torch.maximum(union, mask[None])
        return union

    def append(self, d: dict, key: Hashable) -> None:
        image = d[key]
        shape = tuple(image.shape[1:])
        channel = (self.low + (self.high - self.low) * self.union(d, shape)).to(torch.as_tensor(image).dtype)
        if isinstance(image, MetaTensor):
            channel = MetaTensor(channel, meta=image.meta)
        d[key] = torch.cat([image, channel.to(image.device)], dim=0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return _update_keys(self, data, self.enabled, self.append)


# ------------------------------------------------------------------------------------------------------ HU check


class CheckHURange(Transform):
    """Stop a CT that is not in Hounsfield units, naming its file (``meta["filename_or_obj"]``).

    Checks, in order: NaN/inf voxels; all values within ``[-normalised_span, normalised_span]`` (already
    normalised or windowed); a minimum below ``min_hu`` or a maximum above ``max_hu``; a minimum above ``air_hu``
    (no air: raw stored values without the rescale slope and intercept, or a wrong scaling).

    Args:
        min_hu: lowest plausible value. Default -3100, below the -3024 some scanners store outside the
            reconstruction circle.
        max_hu: highest plausible value. Default 40000 (metal on extended-range scales stays below it).
        normalised_span: a volume entirely within +-this is taken as normalised. ``None`` skips the check.
        air_hu: the minimum must be at or below this, since a chest CT holds air. ``None`` skips the check.

    Input any array or tensor; returned unchanged.
    """

    def __init__(
        self,
        min_hu: float = -3100.0,
        max_hu: float = 40000.0,
        normalised_span: float | None = 5.0,
        air_hu: float | None = -500.0,
    ) -> None:
        if not min_hu < max_hu:
            raise ValueError(f"min_hu must be below max_hu, got {min_hu} and {max_hu}")
        self.min_hu, self.max_hu = float(min_hu), float(max_hu)
        self.normalised_span = None if normalised_span is None else float(normalised_span)
        self.air_hu = None if air_hu is None else float(air_hu)

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        name = source_name(image)
        data = torch.as_tensor(image)
        data = (data.as_tensor() if isinstance(data, MetaTensor) else data).to(torch.float32)
        if data.numel() == 0:
            raise ValueError(f"'{name}': empty image, shape {tuple(data.shape)}")
        finite = torch.isfinite(data)
        if not bool(finite.all()):
            raise ValueError(f"'{name}': {int((~finite).sum())} NaN/inf voxel(s); expected finite HU values")
        low, high = float(data.min()), float(data.max())
        found = f"values in [{low:g}, {high:g}]"
        if self.normalised_span is not None and -self.normalised_span <= low and high <= self.normalised_span:
            raise ValueError(
                f"'{name}': {found} look already normalised (all within +-{self.normalised_span:g}); expected a CT "
                "in Hounsfield units (air -1000, soft tissue 0-100, bone up to about 3000)"
            )
        if low < self.min_hu or high > self.max_hu:
            raise ValueError(
                f"'{name}': {found} outside the plausible HU range [{self.min_hu:g}, {self.max_hu:g}] (settings "
                "min_hu, max_hu); expected a CT in Hounsfield units"
            )
        if self.air_hu is not None and low > self.air_hu:
            raise ValueError(
                f"'{name}': {found} hold no air (minimum above {self.air_hu:g} HU); raw stored values without the "
                "DICOM rescale slope/intercept, or not a CT in Hounsfield units?"
            )
        return image


class CheckHURanged(MapTransform):
    """Dictionary wrapper of :class:`CheckHURange` over ``keys``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        min_hu: float = -3100.0,
        max_hu: float = 40000.0,
        normalised_span: float | None = 5.0,
        air_hu: float | None = -500.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckHURange(min_hu, max_hu, normalised_span, air_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


LoadStructureMasksD = LoadStructureMasksDict = LoadStructureMasksd


MergeSegmentationD = MergeSegmentationDict = MergeSegmentationd


IsolateBodyD = IsolateBodyDict = IsolateBodyd


CheckHURangeD = CheckHURangeDict = CheckHURanged


AppendMaskChannelD = AppendMaskChannelDict = AppendMaskChanneld
