"""Convert NSCLC-Radiomics-style DICOM cases (CT series, RTSTRUCT, optional SEG) into the ``latent_ct`` NIfTI layout.

The ``latent_ct`` bundle reads NIfTI files (the layout its phantom writer also produces): ``<out>/<case_id>/ct.nii.gz``
in Hounsfield units with its real affine, one binary ``<out>/<case_id>/masks/<ROI name>.nii.gz`` per structure on the
CT grid, and a decathlon ``dataset.json`` whose ``training`` entries are
``{"case_id", "image", "masks": {name: relative path}}``. Public collections such as NSCLC-Radiomics are DICOM: a CT
series stored as one file per slice, an RTSTRUCT holding the structures as planar contours in patient coordinates,
and sometimes a DICOM SEG. This tool bridges the two so that the bundle never has to read DICOM.

Usage::

    python -m tools.dicom_to_nifti data/NSCLC-Radiomics/LUNG1-001 --out data/lung_ct
    python -m tools.dicom_to_nifti data/NSCLC-Radiomics --out data/lung_ct --collection --skip_errors

How a case is converted:

* Files are found by their headers, not by folder names: every ``.dcm`` file (and every other file with a DICOM
  preamble) below the case folder is read; the Modality (``CT``, ``RTSTRUCT``, ``SEG``) says what it is. CT
  localizers (scouts) and other modalities are ignored.
* The CT series must be complete and regular (no missing slices, one slice spacing). MONAI's ``PydicomReader`` stacks
  it and gives the RAS affine and Hounsfield units (RescaleSlope/RescaleIntercept); the result is checked against the
  affine built here from ImagePositionPatient / ImageOrientationPatient / PixelSpacing. The voxel order is the DICOM
  order (first axis along the image columns, second along the rows, third the slice order), with the affine saying
  where each voxel lies; loaders reorient as they need.
* RTSTRUCT contours (closed planar polygons in patient mm) are placed on the CT slice with the nearest position along
  the slice normal and mapped to voxel coordinates. They are rasterised by the pixel-centre rule: a voxel is inside
  when its centre lies on a contour of its slice (within 0.01 voxel), or when it lies inside an odd number of the
  slice's contours (even-odd rule, so an inner contour cuts a hole). This is the convention of the tools that turn
  masks into contours by tracing their boundary voxels (rt-utils and other writers built on OpenCV's border
  following): each contour runs through the centres of the structure's own boundary voxels, the outer border and
  the border around each hole, so the written mask comes back exactly, holes and structures one voxel wide (whose
  contours have no interior, or only one or two points) included. (A writer that draws a hole's contour through the
  hole's outermost voxels instead gets those voxels in the mask.) Contours that do not pass through voxel centres
  (drawn by hand, interpolated) get the usual rule: the voxels whose centres lie inside. How it compares (measured
  in tests/tools/test_dicom_to_nifti.py):

  - rt-utils (1.2.7) reads its own contours back exactly, as this tool does; it rounds vertices to whole voxels and
    fills with OpenCV including the boundary, so contours off the centres come out up to one voxel larger than here.
    It is not used for the conversion: it is right only for square images with square pixels (it sizes masks
    Columns x Rows and swaps the PixelSpacing values), needs every contour to name its CT slice, and brings OpenCV.
  - dcmrtstruct2nii (5) fills each contour with scikit-image's polygon (centres inside, or exactly on an edge in
    floating point) and XORs the contours of a slice. Off the centres it agrees with this tool except at centres on
    a contour. On contours through centres, whether it keeps a boundary voxel depends on the rounding of the decimal
    coordinates: of rt-utils' contours it keeps about 281 of the disc's 305 voxels per slice (Dice 0.958), 89 % of a
    ring (the XOR also removes the hole-border voxels it does hit) and nothing of structures one voxel wide. It pulls
    SimpleITK and no longer runs with pydicom 3 (it calls pydicom.read_file).

  The former half-open rule (centres on a low-index edge inside, on a high-index edge outside) lost the boundary
  voxels on the high-index sides: 280 of rt-utils' 305 disc voxels per slice.
* A DICOM SEG (read with highdicom) gives one mask per segment, named by its SegmentLabel; every frame is placed on
  the CT slice at its position (the SEG must share the CT's orientation and pixel spacing). A segment whose name is
  already taken by an RTSTRUCT structure is skipped with a warning (NSCLC-Radiomics stores the same structures twice).
* Structure names are kept as written (the bundle maps synonyms later); only characters that cannot appear in file
  names are replaced by ``_``, and a repeated name gets a ``_2``, ``_3`` suffix.
* Each case is written into a hidden temporary sibling folder that is renamed to ``<out>/<case_id>`` at the end; an
  existing case folder is never overwritten.

pydicom and highdicom are optional (``pip install -e '.[dicom]'``); they are imported only when a case is converted.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fire
import numpy as np

from common.io import atomic_write_nifti, atomic_write_text

__all__ = [
    "DICOM_EXTRA_HINT",
    "CtSeries",
    "CaseFiles",
    "sanitise_name",
    "find_dicom_files",
    "select_ct_series",
    "ct_series_geometry",
    "load_ct",
    "polygon_mask",
    "contour_centres",
    "slice_mask",
    "rtstruct_masks",
    "seg_masks",
    "convert_case",
    "convert_collection",
    "update_dataset_json",
    "main",
]

logger = logging.getLogger(__name__)

DICOM_EXTRA_HINT = "pip install -e '.[dicom]'"
CT_FILE = "ct.nii.gz"
MASK_FOLDER = "masks"
DATASET_JSON = "dataset.json"
_NIFTI_SUFFIX = ".nii.gz"
_ILLEGAL_NAME_CHARACTERS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_SPACING_RTOL = 0.01  # relative tolerance on slice spacing (and on the gap that counts as missing slices)
_GRID_ATOL = 0.05  # voxels: how far a SEG frame may lie off the CT grid
# voxels: how close a contour must pass to a voxel centre to be on it. ContourData are decimal strings and writers
# transform in single precision (rt-utils: ~1e-5 voxels); 0.01 absorbs that and coordinates written with few decimals,
# and moves no boundary by more than 1 % of a voxel.
_ON_CONTOUR_ATOL = 0.01
_AFFINE_ATOL = 1e-3  # mm: agreement between MONAI's affine and the one built from the headers


def _import_pydicom() -> Any:
    """Import pydicom lazily; a clear ImportError tells how to install the optional extra."""
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(f"converting DICOM needs pydicom (>= 2.4): {DICOM_EXTRA_HINT}") from err
    return pydicom


def _import_highdicom() -> Any:
    """Import highdicom lazily (only needed for DICOM SEG files)."""
    try:
        import highdicom
    except ImportError as err:
        raise ImportError(f"reading DICOM SEG files needs highdicom: {DICOM_EXTRA_HINT}") from err
    return highdicom


def sanitise_name(name: str, fallback: str = "ROI") -> str:
    """Make ``name`` usable as a file name: characters illegal in file names become ``_``, nothing else changes.

    Control characters and ``< > : " / \\ | ? *`` are replaced; surrounding spaces and trailing dots are removed. An
    empty result (or ``.`` / ``..``) becomes ``fallback``.
    """
    cleaned = _ILLEGAL_NAME_CHARACTERS.sub("_", str(name)).strip().rstrip(".").strip()
    return cleaned if cleaned not in ("", ".", "..") else fallback


def _unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... if taken (compared case-insensitively, for such file systems)."""
    candidate, n = name, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate.lower())
    return candidate


@dataclass
class CtSeries:
    """A validated CT series: its files in stacking order and the geometry checked from their headers.

    Attributes:
        series_uid: SeriesInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID ("" if absent).
        folder: the folder holding all its files.
        files: slice files in the order MONAI stacks them (InstanceNumber), which follows the slice positions.
        sop_instance_uids: SOPInstanceUID of each slice, same order.
        positions: (n, 3) ImagePositionPatient of each slice (LPS mm), same order.
        row_direction: unit vector along a row (increasing column index), LPS.
        column_direction: unit vector along a column (increasing row index), LPS.
        pixel_spacing: (row spacing, column spacing) in mm, as in PixelSpacing.
        shape: (columns, rows, slices): the voxel grid of the NIfTI file.
    """

    series_uid: str
    frame_of_reference_uid: str
    folder: Path
    files: list[Path]
    sop_instance_uids: list[str]
    positions: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int, int]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, row direction x column direction (LPS)."""
        normal = np.cross(self.row_direction, self.column_direction)
        return normal / np.linalg.norm(normal)

    @property
    def slice_positions(self) -> np.ndarray:
        """Position of each slice along the normal (mm), in stacking order."""
        return self.positions @ self.normal

    @property
    def slice_spacing(self) -> float:
        """Mean distance between neighbouring slices along the normal (mm)."""
        return float(abs(self.slice_positions[-1] - self.slice_positions[0]) / (len(self.files) - 1))

    def affine_lps(self) -> np.ndarray:
        """(4, 4) voxel (column i, row j, slice k) -> patient LPS mm affine, built from the headers."""
        affine = np.eye(4)
        affine[:3, 0] = self.row_direction * self.pixel_spacing[1]
        affine[:3, 1] = self.column_direction * self.pixel_spacing[0]
        affine[:3, 2] = (self.positions[-1] - self.positions[0]) / (len(self.files) - 1)
        affine[:3, 3] = self.positions[0]
        return affine

    def affine_ras(self) -> np.ndarray:
        """The NIfTI (RAS) affine: :meth:`affine_lps` with the first two world axes negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def in_plane_indices(self, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Voxel column (i) and row (j) coordinates of LPS ``points`` (n, 3) relative to slice ``k``'s origin."""
        offset = np.asarray(points, dtype=np.float64) - self.positions[k]
        return offset @ self.row_direction / self.pixel_spacing[1], offset @ self.column_direction / self.pixel_spacing[
            0
        ]

    def nearest_slice(self, points: np.ndarray) -> tuple[int, float]:
        """Index of the slice nearest to the mean normal position of ``points`` and the distance to it (in slices)."""
        where = float(np.mean(np.asarray(points, dtype=np.float64) @ self.normal))
        distances = np.abs(self.slice_positions - where)
        k = int(np.argmin(distances))
        return k, float(distances[k] / self.slice_spacing)


@dataclass
class CaseFiles:
    """The DICOM files of one case, sorted by what their headers say.

    Attributes:
        ct_series: SeriesInstanceUID -> list of (file, header read without pixel data) of non-localizer CT slices.
        rtstructs: (file, full dataset) of every RTSTRUCT.
        segs: (file, header) of every DICOM SEG.
        ignored: modality (or ``"CT localizer"``) -> number of files skipped.
    """

    ct_series: dict[str, list[tuple[Path, Any]]] = field(default_factory=dict)
    rtstructs: list[tuple[Path, Any]] = field(default_factory=list)
    segs: list[tuple[Path, Any]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def _candidate_files(case_dir: Path) -> Iterator[Path]:
    """Every non-hidden regular file below ``case_dir`` (any depth), in sorted order."""
    for path in sorted(case_dir.rglob("*")):
        relative = path.relative_to(case_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def find_dicom_files(case_dir: str | os.PathLike) -> CaseFiles:
    """Read the header of every DICOM file below ``case_dir`` and sort the files into CT, RTSTRUCT and SEG.

    A file is read when its name ends with ``.dcm`` (any case) or when it starts with the DICOM preamble; other
    files (notes, licences, thumbnails) are skipped. DICOMDIR files and other modalities are counted as ignored.

    Args:
        case_dir: the case folder; files may be nested at any depth (e.g. ``CASE/<study>/<series>/*.dcm``).

    Returns:
        The :class:`CaseFiles` found.

    Raises:
        FileNotFoundError: ``case_dir`` is not a folder.
        ValueError: a ``.dcm`` (or DICOM-preamble) file cannot be read or has no Modality; the message names it.
        ImportError: pydicom is not installed.
    """
    pydicom = _import_pydicom()
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise FileNotFoundError(f"case folder {case_dir} does not exist or is not a folder.")
    found = CaseFiles()
    for path in _candidate_files(case_dir):
        named_dicom = path.suffix.lower() == ".dcm"
        if not named_dicom and not pydicom.misc.is_dicom(path):
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=named_dicom)
            modality = str(header.get("Modality", "")).strip().upper()
            sop_class = str(header.get("SOPClassUID", ""))
        except Exception as err:  # pydicom raises many kinds of errors on corrupt files
            raise ValueError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err}).") from err
        if sop_class == _DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
            found.ignored["DICOMDIR"] += 1
        elif not modality:
            raise ValueError(
                f"{path}: unreadable DICOM file: no Modality (0008,0060) found in its header "
                f"(SOPClassUID {sop_class or 'missing'}); the file is corrupt or not a DICOM image/object."
            )
        elif modality == "CT":
            if "LOCALIZER" in [str(value).upper() for value in header.get("ImageType", [])]:
                found.ignored["CT localizer"] += 1
            else:
                series_uid = str(header.get("SeriesInstanceUID", ""))
                found.ct_series.setdefault(series_uid, []).append((path, header))
        elif modality == "RTSTRUCT":
            found.rtstructs.append((path, header))
        elif modality == "SEG":
            found.segs.append((path, header))
        else:
            found.ignored[modality] += 1
    return found


def _folders(files: Sequence[tuple[Path, Any]]) -> list[Path]:
    return sorted({path.parent for path, _ in files})


def _required(header: Any, path: Path, keyword: str) -> Any:
    """Value of tag ``keyword`` of a CT slice header, or a ValueError naming the file."""
    value = header.get(keyword)
    if value is None or (not isinstance(value, int | float) and len(value) == 0):
        raise ValueError(f"{path}: CT slice has no {keyword}; it is needed to place the slice in space.")
    return value


def select_ct_series(
    files: CaseFiles, case_dir: str | os.PathLike, series_uid: str | None = None
) -> tuple[str, list[tuple[Path, Any]]]:
    """Pick the case's CT series: the only one, or the one with SeriesInstanceUID ``series_uid``.

    Raises:
        FileNotFoundError: no CT series (the message lists the modalities found).
        ValueError: several CT series and no ``series_uid`` (their UIDs and folders are listed), or ``series_uid``
            is not among them.
    """
    case_dir = Path(case_dir)
    if not files.ct_series:
        seen = dict(files.ignored)
        seen.update({"RTSTRUCT": len(files.rtstructs), "SEG": len(files.segs)})
        found = ", ".join(f"{modality}: {n}" for modality, n in sorted(seen.items()) if n) or "no DICOM files"
        raise FileNotFoundError(f"{case_dir}: no CT series found (files by modality: {found}).")

    def listing() -> str:
        return "; ".join(
            f"{uid} ({len(slices)} files in {', '.join(str(f) for f in _folders(slices))})"
            for uid, slices in sorted(files.ct_series.items())
        )

    if series_uid is not None:
        if series_uid not in files.ct_series:
            raise ValueError(f"{case_dir}: CT series {series_uid} not found; the CT series there are: {listing()}.")
        return series_uid, files.ct_series[series_uid]
    if len(files.ct_series) > 1:
        raise ValueError(
            f"{case_dir}: expected one CT series, found {len(files.ct_series)}: {listing()}. "
            "Pass series_uid to choose one."
        )
    return next(iter(files.ct_series.items()))


def _check_same(values: Sequence[tuple[Path, Any]], what: str, series_uid: str, atol: float = 1e-4) -> None:
    """All slices must agree on ``what`` (rows, spacing, orientation); name the first file that differs."""
    first_path, first = values[0]
    for path, value in values[1:]:
        if np.shape(value) != np.shape(first) or not np.allclose(value, first, atol=atol):
            raise ValueError(
                f"{path}: CT series {series_uid} mixes slices of different {what}: {np.ravel(value).tolist()} here, "
                f"{np.ravel(first).tolist()} in {first_path}."
            )


def _check_slice_positions(series_uid: str, folder: Path, files: list[Path], along_normal: np.ndarray) -> None:
    """Slices sorted by position must be distinct and evenly spaced: name missing slices and irregular gaps."""
    order = np.argsort(along_normal, kind="stable")
    where, names = along_normal[order], [files[i].name for i in order]
    gaps = np.diff(where)
    repeated = np.flatnonzero(gaps < 1e-3)
    if repeated.size:
        g = int(repeated[0])
        raise ValueError(
            f"{folder}: CT series {series_uid} has two slices at the same position {where[g]:g} mm along the slice "
            f"normal: {names[g]} and {names[g + 1]}."
        )
    spacing = float(np.median(gaps))
    tolerance = _SPACING_RTOL * spacing
    multiples = np.rint(gaps / spacing)
    missing = [g for g in range(len(gaps)) if multiples[g] >= 2 and abs(gaps[g] - multiples[g] * spacing) <= tolerance]
    if missing:
        details = "; ".join(
            f"{int(multiples[g]) - 1} between positions {where[g]:g} and {where[g + 1]:g} mm "
            f"({names[g]} and {names[g + 1]})"
            for g in missing
        )
        total = int(sum(multiples[g] - 1 for g in missing))
        raise ValueError(
            f"{folder}: CT series {series_uid} is missing {total} slice(s) (slice spacing {spacing:g} mm): {details}."
        )
    irregular = np.flatnonzero(np.abs(gaps - spacing) > tolerance)
    if irregular.size:
        g = int(irregular[0])
        raise ValueError(
            f"{folder}: CT series {series_uid} has inconsistent slice spacing: gaps of "
            f"{sorted({round(float(s), 4) for s in gaps})} mm between neighbouring slices (expected {spacing:g} mm "
            f"within {tolerance:.3g} mm); first irregular gap: {gaps[g]:g} mm between positions {where[g]:g} and "
            f"{where[g + 1]:g} mm ({names[g]} and {names[g + 1]})."
        )


def ct_series_geometry(series_uid: str, slices: list[tuple[Path, Any]]) -> CtSeries:
    """Validate the headers of one CT series and return its geometry, slices in MONAI's stacking order.

    Args:
        series_uid: the series' SeriesInstanceUID (for messages).
        slices: (file, header) of each slice, as found by :func:`find_dicom_files`.

    Returns:
        The :class:`CtSeries`, files sorted by InstanceNumber (the order MONAI's ``PydicomReader`` stacks them in).

    Raises:
        ValueError: the slices are spread over several folders (or a folder name holds glob characters), fewer than
            2 slices, a slice lacks a geometry tag, slices differ in size / PixelSpacing / ImageOrientationPatient,
            the orientation is not two orthogonal unit vectors, two slices share a position, slices are missing
            (which and where), the slice spacing is inconsistent, or InstanceNumbers repeat or do not follow the
            slice positions. Each message names the folder or file.
    """
    folders = _folders(slices)
    if len(folders) != 1:
        raise ValueError(
            f"CT series {series_uid} is spread over {len(folders)} folders ({', '.join(map(str, folders))}); "
            "its slices must lie in one folder."
        )
    folder = folders[0]
    if glob.escape(str(folder)) != str(folder):
        raise ValueError(
            f"{folder}: the CT series' folder name holds glob characters ('*', '?' or '['), which MONAI's "
            "PydicomReader would read as a pattern; rename the folder."
        )
    if len(slices) < 2:
        raise ValueError(f"{folder}: CT series {series_uid} has {len(slices)} slice; a volume needs at least 2.")
    sizes = [(p, (int(_required(h, p, "Rows")), int(_required(h, p, "Columns")))) for p, h in slices]
    spacings = [(p, [float(v) for v in _required(h, p, "PixelSpacing")]) for p, h in slices]
    orientations = [(p, [float(v) for v in _required(h, p, "ImageOrientationPatient")]) for p, h in slices]
    positions = np.array([[float(v) for v in _required(h, p, "ImagePositionPatient")] for p, h in slices])
    _check_same(sizes, "size (Rows, Columns)", series_uid, atol=0)
    _check_same(spacings, "PixelSpacing", series_uid)
    _check_same(orientations, "ImageOrientationPatient", series_uid)
    instance_numbers = [int(_required(h, p, "InstanceNumber")) for p, h in slices]
    files = [p for p, _ in slices]
    row_dir, col_dir = np.array(orientations[0][1][:3]), np.array(orientations[0][1][3:])
    if not (np.allclose(np.linalg.norm([row_dir, col_dir], axis=1), 1, atol=1e-3) and abs(row_dir @ col_dir) < 1e-3):
        raise ValueError(
            f"{orientations[0][0]}: ImageOrientationPatient {orientations[0][1]} is not two orthogonal unit vectors."
        )
    normal = np.cross(row_dir, col_dir)
    along_normal = positions @ (normal / np.linalg.norm(normal))
    _check_slice_positions(series_uid, folder, files, along_normal)

    # MONAI's PydicomReader stacks the slices by InstanceNumber: that order must follow the positions.
    counts = Counter(instance_numbers)
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:
        names = [p.name for p, n in zip(files, instance_numbers) if n in repeated]
        raise ValueError(f"{folder}: CT series {series_uid} repeats InstanceNumber {repeated} (files {names}).")
    order = np.argsort(instance_numbers)
    stacked = along_normal[order]
    if not (np.all(np.diff(stacked) > 0) or np.all(np.diff(stacked) < 0)):
        raise ValueError(
            f"{folder}: CT series {series_uid}: the InstanceNumber order of the slices does not follow their "
            "positions along the slice normal, so the slices cannot be stacked by InstanceNumber."
        )
    first = slices[order[0]][1]
    return CtSeries(
        series_uid=series_uid,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        folder=folder,
        files=[files[i] for i in order],
        sop_instance_uids=[str(slices[i][1].get("SOPInstanceUID", "")) for i in order],
        positions=positions[order],
        row_direction=row_dir / np.linalg.norm(row_dir),
        column_direction=col_dir / np.linalg.norm(col_dir),
        pixel_spacing=(spacings[0][1][0], spacings[0][1][1]),
        shape=(sizes[0][1][1], sizes[0][1][0], len(slices)),
    )


def _find_unreadable_slice(series: CtSeries) -> Path | None:
    """First slice whose pixel data pydicom cannot decode (used to name the culprit when stacking failed)."""
    pydicom = _import_pydicom()
    for path in series.files:
        try:
            _ = pydicom.dcmread(path, force=True).pixel_array
        except Exception:  # any decoding failure names this file
            return path
    return None


def load_ct(series: CtSeries) -> tuple[np.ndarray, np.ndarray]:
    """Stack a validated CT series with MONAI's ``PydicomReader`` and return Hounsfield units and the RAS affine.

    Only the series' own files are read, even when the folder also holds an RTSTRUCT or SEG (the reader is given a
    file-name pattern matching exactly those files). MONAI applies RescaleSlope/RescaleIntercept per slice.

    Returns:
        (volume, affine): (columns, rows, slices) array, int16 when every value is a whole number within int16, else
        float32; (4, 4) RAS affine, equal to :meth:`CtSeries.affine_ras`.

    Raises:
        ValueError: a slice cannot be decoded (the file is named).
        RuntimeError: MONAI's grid or affine disagrees with the headers (should not happen for a validated series).
    """
    pydicom = _import_pydicom()
    from monai.data import PydicomReader

    folder = str(series.folder)
    pattern = "(?:" + "|".join(re.escape(os.path.join(folder, path.name)) for path in series.files) + r")\Z"
    reader = PydicomReader(fname_regex=pattern, force=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # per-slice notes; the series was validated already
            array, meta = reader.get_data(reader.read(folder))
    except (ValueError, RuntimeError, OSError, AttributeError, pydicom.errors.InvalidDicomError) as err:
        culprit = _find_unreadable_slice(series)
        where = f"{culprit}: cannot decode the pixel data of this CT slice" if culprit else f"{folder}: cannot read"
        raise ValueError(f"{where} (series {series.series_uid}; {type(err).__name__}: {err}).") from err
    volume = np.asarray(array, dtype=np.float32)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if volume.shape != series.shape:
        raise RuntimeError(f"{folder}: MONAI stacked the CT series into {volume.shape}, expected {series.shape}.")
    if not np.allclose(affine, series.affine_ras(), atol=_AFFINE_ATOL):
        raise RuntimeError(
            f"{folder}: MONAI's affine\n{affine}\ndisagrees with the affine from the DICOM headers\n"
            f"{series.affine_ras()}."
        )
    info = np.iinfo(np.int16)
    if np.array_equal(volume, np.rint(volume)) and volume.min() >= info.min and volume.max() <= info.max:
        return volume.astype(np.int16), affine
    return volume, affine


def _edges(columns: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges (x0, y0, x1, y1) of a closed contour, vertex v -> v+1 and the closing edge last -> first.

    Coordinates within ``_ON_CONTOUR_ATOL`` of a whole voxel index are set to it (undoing the rounding of the writers).
    """
    snapped = []
    for values in (columns, rows):
        values = np.asarray(values, dtype=np.float64)
        nearest = np.rint(values)
        snapped.append(np.where(np.abs(values - nearest) <= _ON_CONTOUR_ATOL, nearest, values))
    x0, y0 = snapped
    return x0, y0, np.roll(x0, -1), np.roll(y0, -1)


def _row_crossings(
    edges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], spans: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each True (edge, row) of ``spans``: the row, and the i coordinate where that (slanted) edge meets it."""
    x0, y0, x1, y1 = edges
    edge, row = np.nonzero(spans)
    return row, x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])


def polygon_mask(columns: np.ndarray, rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill a closed polygon given in voxel coordinates with the even-odd rule on a (columns, rows) slice grid.

    Voxel ``(i, j)`` has its centre at coordinates ``(i, j)``. A centre is inside when a ray towards +i crosses the
    polygon's edges an odd number of times; an edge counts when it spans the row half-open (``y0 <= j < y1`` or
    ``y1 <= j < y0``), so centres on the low-i/low-j edges of a square are inside and those on the high edges are not.
    XOR-ing the results of several contours of a slice gives the even-odd fill of them all (holes included). This
    decides the centres off the contours; :func:`slice_mask` adds those on them (:func:`contour_centres`). Vertex
    coordinates within 0.01 voxel of a whole index are first set to it, as in :func:`contour_centres`.

    Args:
        columns: (n,) vertex coordinates along the first voxel axis (image columns).
        rows: (n,) vertex coordinates along the second voxel axis (image rows).
        shape: (number of columns, number of rows) of the slice.

    Returns:
        Boolean (columns, rows) mask.
    """
    edges = _edges(columns, rows)
    _, y0, _, y1 = edges
    centre_rows = np.arange(shape[1], dtype=np.float64)
    row, crossing = _row_crossings(edges, (y0[:, None] > centre_rows) != (y1[:, None] > centre_rows))
    # A crossing at x toggles every centre i < x: add +1 at i = 0 and -1 at i = ceil(x), then a running sum counts.
    return _row_runs(row, np.zeros_like(row), np.ceil(crossing), shape) % 2 == 1


def _row_runs(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(columns, rows) count, for every voxel, of the runs ``starts[r] <= i < stops[r]`` on row ``rows[r]``."""
    n_i, n_j = shape
    starts = np.clip(starts, 0, n_i).astype(np.int64)
    stops = np.clip(stops, 0, n_i).astype(np.int64)
    toggles = np.zeros((n_j, n_i + 1), dtype=np.int64)
    np.add.at(toggles, (rows, starts), 1)
    np.add.at(toggles, (rows, stops), -1)
    return np.cumsum(toggles[:, :n_i], axis=1).T


def contour_centres(columns: np.ndarray, rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres that lie on a closed contour (its edges and vertices) on a (columns, rows) slice grid.

    A centre ``(i, j)`` is on the contour when an edge passes within ``_ON_CONTOUR_ATOL`` voxels of it (measured along
    the row); vertex coordinates that close to a whole index are first set to it, so that the decimal strings of
    ContourData and the single-precision transforms of the writers do not move a contour off the centres it was
    drawn through. Contours of one or two points (a structure one or two pixels across) mark the centres they touch.

    Args:
        columns: (n,) vertex coordinates along the first voxel axis (image columns).
        rows: (n,) vertex coordinates along the second voxel axis (image rows).
        shape: (number of columns, number of rows) of the slice.

    Returns:
        Boolean (columns, rows) mask of the centres on the contour.
    """
    n_i, n_j = shape
    edges = _edges(columns, rows)
    x0, y0, x1, y1 = edges
    # Edges that are not horizontal meet each whole row between their ends (ends included) at one point.
    centre_rows = np.arange(n_j, dtype=np.float64)
    low, high = np.minimum(y0, y1)[:, None], np.maximum(y0, y1)[:, None]
    row, crossing = _row_crossings(edges, (y0 != y1)[:, None] & (low <= centre_rows) & (centre_rows <= high))
    column = np.rint(crossing)
    hit = (np.abs(crossing - column) <= _ON_CONTOUR_ATOL) & (column >= 0) & (column < n_i)
    on = np.zeros(shape, dtype=bool)
    on[column[hit].astype(np.int64), row[hit]] = True
    # Horizontal edges (and single points) on a whole row hold every whole column between their ends.
    flat = (y0 == y1) & (y0 == np.rint(y0)) & (y0 >= 0) & (y0 < n_j)
    start, stop = np.ceil(np.minimum(x0, x1)[flat]), np.floor(np.maximum(x0, x1)[flat]) + 1
    return on | (_row_runs(y0[flat].astype(np.int64), start, stop, shape) > 0)


def slice_mask(contours: Sequence[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the contours of one slice: centres on a contour, and centres inside an odd number of contours.

    Args:
        contours: (columns, rows) vertex coordinates of each contour, in voxels.
        shape: (number of columns, number of rows) of the slice.

    Returns:
        Boolean (columns, rows) mask: :func:`polygon_mask` of all contours XOR-ed (even-odd rule: an inner contour cuts
        a hole), OR :func:`contour_centres` of every contour (pixel-centre rule: a centre on a contour is inside).

    The geometry is plain numpy, one pass over the edges and rows of a slice. scikit-image's ``grid_points_in_poly``
    classifies centres the same way (the tests use it as an oracle) but tests every centre against every edge with
    exact float equality, and would be a further dependency for ~40 lines.
    """
    inside = np.zeros(shape, dtype=bool)
    on_contour = np.zeros(shape, dtype=bool)
    for columns, rows in contours:
        inside ^= polygon_mask(columns, rows, shape)
        on_contour |= contour_centres(columns, rows, shape)
    return inside | on_contour


def _referenced_series(dataset: Any) -> set[str]:
    """SeriesInstanceUIDs an RTSTRUCT references (ReferencedFrameOfReference -> RTReferencedStudy -> Series)."""
    uids = set()
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    uids.add(str(series.SeriesInstanceUID))
    return uids


def _check_reference(
    path: Path, kind: str, series: CtSeries, referenced_series: set[str], frames_of_reference: set[str]
) -> None:
    """The RTSTRUCT/SEG must reference the CT series found (by SeriesInstanceUID, else by FrameOfReferenceUID)."""
    if referenced_series:
        if series.series_uid not in referenced_series:
            raise ValueError(
                f"{path}: this {kind} references CT series {', '.join(sorted(referenced_series))}, but the CT series "
                f"found in the case is {series.series_uid} ({series.folder})."
            )
    elif frames_of_reference and series.frame_of_reference_uid:
        if series.frame_of_reference_uid not in frames_of_reference:
            raise ValueError(
                f"{path}: this {kind} uses frame of reference {', '.join(sorted(frames_of_reference))}, but the CT "
                f"series found in the case ({series.series_uid}) uses {series.frame_of_reference_uid}."
            )
    else:
        warnings.warn(f"{path}: this {kind} names no referenced series; assuming it belongs to the CT.", stacklevel=3)


def _contour_data(contour: Any) -> np.ndarray:
    """ContourData of a contour item as float64 values, parsed straight from the raw text when not yet decoded.

    Decoding large structure sets value by value through pydicom's DS type dominates the conversion time otherwise.
    """
    if "ContourData" not in contour:
        return np.zeros(0)
    value = contour.get_item("ContourData").value
    if isinstance(value, bytes):
        return np.array(value.decode("ascii").replace("\\", " ").replace("\x00", " ").split(), dtype=np.float64)
    if isinstance(value, str | int | float):
        return np.array([float(value)])
    return np.array([float(v) for v in value], dtype=np.float64)


def rtstruct_masks(dataset: Any, path: str | os.PathLike, series: CtSeries) -> Iterator[tuple[str, np.ndarray]]:
    """Rasterise every structure of an RTSTRUCT on the CT grid, one at a time.

    Each CLOSED_PLANAR contour goes to the slice nearest its mean position along the slice normal, its points are
    mapped to voxel coordinates from that slice's ImagePositionPatient and the in-plane direction cosines and pixel
    spacing (the CT affine); the contours of each slice are rasterised together by :func:`slice_mask` (a centre on a
    contour is inside, other centres by the even-odd rule).

    Args:
        dataset: the RTSTRUCT (pydicom dataset).
        path: its file, for messages.
        series: the CT series it must reference.

    Yields:
        (ROI name as in StructureSetROISequence, uint8 (columns, rows, slices) mask) for each structure with contours
        that cover at least one voxel centre. Structures without contours, contours off the volume and empty results
        are skipped with a warning.

    Raises:
        ValueError: the RTSTRUCT references another CT series (both UIDs named); malformed ContourData.
    """
    path = Path(path)
    frames = {str(item.FrameOfReferenceUID) for item in dataset.get("ReferencedFrameOfReferenceSequence", [])}
    _check_reference(path, "RTSTRUCT", series, _referenced_series(dataset), frames)
    names = {int(roi.ROINumber): str(roi.get("ROIName", "")) for roi in dataset.get("StructureSetROISequence", [])}
    contoured = set()
    n_i, n_j, n_k = series.shape
    for item in dataset.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        contoured.add(number)
        name = names.get(number) or f"ROI-{number}"
        contours = [
            c
            for c in item.get("ContourSequence", [])
            if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) == "CLOSED_PLANAR"
        ]
        if not contours:
            warnings.warn(
                f"{path}: ROI '{name}' (number {number}) has no closed planar contours; skipped.", stacklevel=2
            )
            continue
        per_slice: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        off_volume = 0
        for contour in contours:
            try:
                data = _contour_data(contour)
            except ValueError as err:
                raise ValueError(f"{path}: ROI '{name}' has unreadable ContourData ({err}).") from err
            if len(data) % 3:
                raise ValueError(
                    f"{path}: ROI '{name}' has ContourData of {len(data)} values; expected (x, y, z) triplets."
                )
            points = np.reshape(data, (-1, 3))
            if not len(points):
                continue
            k, distance = series.nearest_slice(points)
            if distance > 0.5:
                off_volume += 1
                continue
            per_slice.setdefault(k, []).append(series.in_plane_indices(points, k))
        if off_volume:
            warnings.warn(
                f"{path}: ROI '{name}': {off_volume} of {len(contours)} contour(s) lie outside the CT slices; ignored.",
                stacklevel=2,
            )
        mask = np.zeros(series.shape, dtype=bool)
        for k, polygons in per_slice.items():
            mask[:, :, k] = slice_mask(polygons, (n_i, n_j))
        if not mask.any():
            warnings.warn(f"{path}: ROI '{name}' covers no voxel centre of the CT grid; skipped.", stacklevel=2)
            continue
        yield name, mask.astype(np.uint8)
    for number in sorted(set(names) - contoured):
        warnings.warn(f"{path}: ROI '{names[number]}' (number {number}) has no contours; skipped.", stacklevel=2)


def _functional_group(dataset: Any, frame: int, sequence: str) -> Any:
    """First item of functional group ``sequence`` for 0-based ``frame``: per-frame if there, else shared, else None."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and sequence in per_frame[frame]:
        return getattr(per_frame[frame], sequence)[0]
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return getattr(shared[0], sequence)[0]
    return None


def seg_masks(path: str | os.PathLike, series: CtSeries) -> Iterator[tuple[str, np.ndarray]]:
    """Read a DICOM SEG with highdicom and place each segment's frames on the CT grid.

    Every frame is put on the CT slice at its ImagePositionPatient (matched along the slice normal) with its in-plane
    offset from that slice's origin; frames may be cropped (smaller than the CT slice) or omitted when empty.
    BINARY, FRACTIONAL (thresholded at 0.5) and LABELMAP segmentations are read.

    Args:
        path: the SEG file.
        series: the CT series it must reference.

    Yields:
        (SegmentLabel, uint8 (columns, rows, slices) mask) for each non-empty segment, in segment-number order (empty
        segments are skipped with a warning).

    Raises:
        ValueError: unreadable SEG; it references another CT series; its orientation or pixel spacing differs from the
            CT's; a frame lies off the CT grid, lacks its plane position or refers to an undescribed segment.
        ImportError: highdicom is not installed.
    """
    hd = _import_highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as err:  # highdicom/pydicom raise many kinds of errors on bad files
        raise ValueError(f"{path}: unreadable DICOM SEG ({type(err).__name__}: {err}).") from err
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    frames = {str(seg.FrameOfReferenceUID)} if "FrameOfReferenceUID" in seg else set()
    _check_reference(path, "SEG", series, referenced, frames)

    kind = seg.segmentation_type.value
    numbers = list(seg.segment_numbers)
    masks = {number: np.zeros(series.shape, dtype=bool) for number in numbers}
    n_i, n_j, _ = series.shape
    for f in range(seg.number_of_frames):
        orientation = _functional_group(seg, f, "PlaneOrientationSequence")
        measures = _functional_group(seg, f, "PixelMeasuresSequence")
        position = _functional_group(seg, f, "PlanePositionSequence")
        if orientation is None or measures is None or position is None:
            raise ValueError(f"{path}: frame {f + 1} has no plane orientation, pixel measures or plane position.")
        directions = np.array([float(v) for v in orientation.ImageOrientationPatient])
        spacing = [float(v) for v in measures.PixelSpacing]
        ct_directions = np.concatenate([series.row_direction, series.column_direction])
        if not np.allclose(directions, ct_directions, atol=1e-4) or not np.allclose(spacing, series.pixel_spacing):
            raise ValueError(
                f"{path}: frame {f + 1} has orientation {directions.tolist()} and pixel spacing {spacing}, the CT "
                f"{ct_directions.tolist()} and {list(series.pixel_spacing)}; only SEGs on the CT's grid are supported."
            )
        corner = np.array([[float(v) for v in position.ImagePositionPatient]])
        k, distance = series.nearest_slice(corner)
        i0, j0 = (float(v[0]) for v in series.in_plane_indices(corner, k))
        if distance > _GRID_ATOL or abs(i0 - round(i0)) > _GRID_ATOL or abs(j0 - round(j0)) > _GRID_ATOL:
            raise ValueError(
                f"{path}: frame {f + 1} at {corner[0].tolist()} mm does not lie on a voxel of the CT grid "
                f"(nearest slice {k} at {distance:.3g} slices, in-plane offset ({i0:.3g}, {j0:.3g}) voxels)."
            )
        pixels = seg.get_stored_frame(f, as_index=True).T  # (columns, rows), like the CT slices
        i0, j0 = round(i0), round(j0)
        window = (slice(max(i0, 0), min(i0 + pixels.shape[0], n_i)), slice(max(j0, 0), min(j0 + pixels.shape[1], n_j)))
        crop = pixels[window[0].start - i0 : window[0].stop - i0, window[1].start - j0 : window[1].stop - j0]
        if kind == "LABELMAP":
            for number in numbers:
                masks[number][window[0], window[1], k] |= crop == number
            continue
        identification = _functional_group(seg, f, "SegmentIdentificationSequence")
        number = int(identification.ReferencedSegmentNumber) if identification is not None else None
        if number not in masks:
            raise ValueError(f"{path}: frame {f + 1} refers to segment {number}; the SEG describes segments {numbers}.")
        if kind == "FRACTIONAL":
            frame_mask = crop.astype(np.float64) / float(seg.MaximumFractionalValue) >= 0.5
        else:
            frame_mask = crop > 0
        masks[number][window[0], window[1], k] |= frame_mask
    for number in numbers:
        label = seg.get_segment_description(number).segment_label
        if not masks[number].any():
            warnings.warn(f"{path}: segment '{label}' (number {number}) is empty; skipped.", stacklevel=2)
            continue
        yield label, masks[number].astype(np.uint8)


def _single(items: list[tuple[Path, Any]], kind: str, case_dir: Path) -> tuple[Path, Any] | None:
    if len(items) > 1:
        raise ValueError(
            f"{case_dir}: expected at most one {kind}, found {len(items)}: {', '.join(str(p) for p, _ in items)}."
        )
    return items[0] if items else None


def _entry(case_id: str, mask_names: Sequence[str]) -> dict[str, Any]:
    """A ``dataset.json`` training entry with paths relative to the dataset folder."""
    return {
        "case_id": case_id,
        "image": f"{case_id}/{CT_FILE}",
        "masks": {name: f"{case_id}/{MASK_FOLDER}/{name}{_NIFTI_SUFFIX}" for name in mask_names},
    }


def _check_case_id(case_id: str) -> str:
    case_id = str(case_id)
    if sanitise_name(case_id, fallback="") != case_id or case_id.startswith("."):
        raise ValueError(
            f"case_id {case_id!r} is not usable as a folder name (no path separators, characters illegal in file "
            "names, leading dots or surrounding spaces)."
        )
    return case_id


def convert_case(
    case_dir: str | os.PathLike, out: str | os.PathLike, case_id: str | None = None, series_uid: str | None = None
) -> dict[str, Any]:
    """Convert one DICOM case folder into ``<out>/<case_id>/ct.nii.gz`` and ``<out>/<case_id>/masks/*.nii.gz``.

    Args:
        case_dir: folder holding the case's DICOM files at any depth (one CT series, at most one RTSTRUCT and at most
            one SEG; other modalities and CT localizers are ignored).
        out: dataset folder (created if needed).
        case_id: name of the case folder; default: the name of ``case_dir``.
        series_uid: SeriesInstanceUID of the CT series to convert when the case holds several.

    Returns:
        The case's ``dataset.json`` training entry: ``{"case_id", "image", "masks": {name: path}}`` (paths relative to
        ``out``). ``dataset.json`` itself is not touched (see :func:`update_dataset_json`).

    Raises:
        FileNotFoundError: ``case_dir`` missing, or no CT series in it.
        FileExistsError: ``<out>/<case_id>`` exists (a converted case is never overwritten).
        ValueError: bad input (see the module docstring); the message names the file or folder.
        ImportError: pydicom (or, for a SEG, highdicom) is not installed.
    """
    case_dir, out = Path(case_dir), Path(out)
    case_id = _check_case_id(case_dir.name if case_id is None else case_id)
    final = out / case_id
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite a converted case (remove it first).")
    files = find_dicom_files(case_dir)
    uid, slices = select_ct_series(files, case_dir, series_uid)
    series = ct_series_geometry(uid, slices)
    rtstruct = _single(files.rtstructs, "RTSTRUCT", case_dir)
    seg = _single(files.segs, "SEG", case_dir)
    if rtstruct is None and seg is None:
        warnings.warn(f"{case_dir}: no RTSTRUCT or SEG found; the case gets no masks.", stacklevel=2)
    volume, affine = load_ct(series)

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".tmp-{uuid.uuid4().hex[:12]}-{case_id}"
    staging.mkdir()
    try:
        atomic_write_nifti(volume[None], affine, staging / CT_FILE)
        del volume
        used: set[str] = set()
        names: list[str] = []
        if rtstruct is not None:
            for roi_name, mask in rtstruct_masks(rtstruct[1], rtstruct[0], series):
                name = _unique_name(sanitise_name(roi_name), used)
                atomic_write_nifti(mask[None], affine, staging / MASK_FOLDER / f"{name}{_NIFTI_SUFFIX}")
                names.append(name)
        if seg is not None:
            structures = set(used)  # RTSTRUCT names, case-insensitive
            for label, mask in seg_masks(seg[0], series):
                name = sanitise_name(label)
                if name.lower() in structures:
                    warnings.warn(
                        f"{seg[0]}: segment '{label}' is also a structure of the RTSTRUCT; kept the RTSTRUCT's.",
                        stacklevel=2,
                    )
                    continue
                name = _unique_name(name, used)
                atomic_write_nifti(mask[None], affine, staging / MASK_FOLDER / f"{name}{_NIFTI_SUFFIX}")
                names.append(name)
        if final.exists():
            raise FileExistsError(f"{final} appeared while converting {case_dir}; refusing to overwrite it.")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s -> %s (%d masks)", case_dir, final, len(names))
    return _entry(case_id, names)


def _entry_from_disk(out: Path, case_id: str) -> dict[str, Any]:
    """Training entry of an already converted case folder (its CT and the masks present)."""
    folder = out / case_id
    if not (folder / CT_FILE).is_file():
        raise FileNotFoundError(f"{folder} exists but has no {CT_FILE}; remove the folder and convert the case again.")
    masks = sorted(p.name[: -len(_NIFTI_SUFFIX)] for p in (folder / MASK_FOLDER).glob(f"*{_NIFTI_SUFFIX}"))
    return _entry(case_id, masks)


def update_dataset_json(
    out: str | os.PathLike,
    entries: Sequence[Mapping[str, Any]],
    name: str = "NSCLC-Radiomics",
    description: str = "CT (HU) with RTSTRUCT/SEG structure masks, converted from DICOM by tools.dicom_to_nifti",
) -> Path:
    """Add ``entries`` to ``<out>/dataset.json`` (created if missing; an entry with the same case_id is replaced).

    Returns:
        The path of ``dataset.json`` (written atomically; its training entries sorted by case_id).

    Raises:
        ValueError: an existing ``dataset.json`` is not valid JSON or has no ``training`` list.
    """
    path = Path(out) / DATASET_JSON
    content: dict[str, Any] = {"name": name, "description": description, "numTraining": 0, "training": []}
    if path.exists():
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); fix or remove it.") from err
        if not isinstance(content, dict) or not isinstance(content.get("training"), list):
            raise ValueError(f"{path}: expected an object with a 'training' list, got {type(content).__name__}.")
    training = {str(entry.get("case_id")): entry for entry in content["training"]}
    training.update({str(entry["case_id"]): dict(entry) for entry in entries})
    content["training"] = [training[case_id] for case_id in sorted(training)]
    content["numTraining"] = len(content["training"])
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n", overwrite=True)


def convert_collection(
    root: str | os.PathLike, out: str | os.PathLike, skip_errors: bool = False, skip_existing: bool = False
) -> Path:
    """Convert every case folder directly below ``root`` (e.g. ``NSCLC-Radiomics/LUNG1-001``) and write dataset.json.

    Args:
        root: folder of case folders; each case folder's name is its case_id.
        out: dataset folder.
        skip_errors: log a case that fails (bad input) and go on; by default the first failure stops the run (cases
            already converted stay, and are listed in ``dataset.json``).
        skip_existing: keep case folders already in ``out`` and list them as they are; by default an existing case
            folder is an error.

    Returns:
        The path of ``dataset.json``.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no case folder.
        ValueError / FileExistsError: from :func:`convert_case` when ``skip_errors`` is False.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"collection folder {root} does not exist or is not a folder.")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise FileNotFoundError(f"{root}: no case folders found (expected one sub-folder per case).")
    entries: list[dict[str, Any]] = []
    failures: list[str] = []
    for case_dir in cases:
        if skip_existing and (out / case_dir.name).exists():
            entries.append(_entry_from_disk(out, case_dir.name))
            continue
        try:
            entries.append(convert_case(case_dir, out))
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            if not skip_errors:
                if entries:  # list the cases converted so far, so that skip_existing can resume the run
                    update_dataset_json(out, entries)
                raise
            failures.append(f"{case_dir.name}: {err}")
            logger.error("skipped case %s: %s", case_dir, err)
    if failures:
        warnings.warn(f"{len(failures)} case(s) skipped:\n" + "\n".join(failures), stacklevel=2)
    if not entries:
        raise ValueError(f"{root}: none of the {len(cases)} case folder(s) could be converted; see the warnings.")
    return update_dataset_json(out, entries)


def main(
    path: str,
    out: str,
    case_id: str | None = None,
    collection: bool = False,
    series_uid: str | None = None,
    skip_errors: bool = False,
    skip_existing: bool = False,
) -> None:
    """Convert one DICOM case folder (or, with ``--collection``, a folder of case folders) and update dataset.json.

    Args:
        path: the case folder, or the collection folder with ``--collection``.
        out: dataset folder; ``<out>/<case_id>/`` is written and ``<out>/dataset.json`` created or updated.
        case_id: name of the case (single case only); default: the folder's name.
        collection: treat ``path`` as a folder of case folders.
        series_uid: CT SeriesInstanceUID to convert when a case holds several (single case only).
        skip_errors: with ``--collection``, skip cases that fail instead of stopping.
        skip_existing: with ``--collection``, keep cases already converted in ``out``.
    """
    if collection:
        if case_id is not None or series_uid is not None:
            raise ValueError("case_id and series_uid apply to a single case; leave them out with --collection.")
        dataset = convert_collection(path, out, skip_errors=skip_errors, skip_existing=skip_existing)
        n = len(json.loads(dataset.read_text(encoding="utf-8"))["training"])
        print(f"{dataset}: {n} case(s) listed")
        return
    entry = convert_case(path, out, case_id=case_id, series_uid=series_uid)
    dataset = update_dataset_json(out, [entry])
    masks = ", ".join(entry["masks"]) or "none"
    print(f"converted {path} -> {Path(out) / entry['case_id']} (masks: {masks}); listed in {dataset}")


if __name__ == "__main__":
    fire.Fire(main)
