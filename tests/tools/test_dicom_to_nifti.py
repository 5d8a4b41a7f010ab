"""Tests of tools/dicom_to_nifti.py on tiny synthetic DICOM cases written with pydicom (and highdicom for SEG).

The round-trip tests write masks as RTSTRUCTs with rt-utils and read RTSTRUCTs back with rt-utils and dcmrtstruct2nii
(the ``dev`` extra installs them) to check the rasterisation rule against the tools that write and read such data.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tools import dicom_to_nifti as d2n

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
ROWS, COLUMNS, N_SLICES = 12, 16, 8  # rows != columns so that a transposed grid is caught
ROW_SPACING, COLUMN_SPACING, SLICE_SPACING = 0.8, 0.6, 2.5  # PixelSpacing = (row spacing, column spacing)
ORIGIN = np.array([-20.5, 13.25, -40.0])
INTERCEPT = -1024.0


def _rotation(a: float, b: float) -> np.ndarray:
    """Rz(a) @ Rx(b): an oblique orientation, so that no axis of the grid is along a patient axis."""
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


ROTATION = _rotation(math.radians(30), math.radians(10))
ROW_DIR, COL_DIR, NORMAL = ROTATION[:, 0], ROTATION[:, 1], ROTATION[:, 2]


def slice_position(s: int) -> np.ndarray:
    """ImagePositionPatient of slice s (InstanceNumber s + 1): positions descend along the normal, as head-first CT."""
    return ORIGIN - s * SLICE_SPACING * NORMAL


@dataclass(frozen=True)
class Grid:
    """Size and pixel spacing of a synthetic CT series (orientation, origin and slice positions as above)."""

    rows: int = ROWS
    columns: int = COLUMNS
    slices: int = N_SLICES
    row_spacing: float = ROW_SPACING
    column_spacing: float = COLUMN_SPACING

    def to_lps(self, i: float, j: float, s: int) -> np.ndarray:
        """DICOM's own mapping: column i, row j of slice s -> patient LPS mm (PS3.3 C.7.6.2.1.1)."""
        return slice_position(s) + i * self.column_spacing * ROW_DIR + j * self.row_spacing * COL_DIR


SMALL = Grid()
# rt-utils 1.2.7 is right only for square images with square pixels (it sizes its masks Columns x Rows and swaps the
# two PixelSpacing values), so the round trips through it use such a grid: 24 slices of 40 x 40 voxels.
ROUND_TRIP = Grid(rows=40, columns=40, slices=24, row_spacing=0.75, column_spacing=0.75)


def voxel_to_lps(i: float, j: float, s: int) -> np.ndarray:
    """:meth:`Grid.to_lps` of the small grid most tests use."""
    return SMALL.to_lps(i, j, s)


def raw_pixels(s: int, grid: Grid = SMALL) -> np.ndarray:
    """Stored values of slice s, (rows, columns): every voxel differs, so any flip or transpose shows."""
    r, c = np.mgrid[: grid.rows, : grid.columns]
    return (1000 + c + 20 * r + 300 * s).astype(np.uint16)


def expected_hu() -> np.ndarray:
    """(columns, rows, slices) Hounsfield units the NIfTI file must hold."""
    return np.stack([raw_pixels(s).T.astype(np.float64) + INTERCEPT for s in range(N_SLICES)], axis=-1)


def expected_ras_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = COLUMN_SPACING * ROW_DIR, ROW_SPACING * COL_DIR
    lps[:3, 2], lps[:3, 3] = -SLICE_SPACING * NORMAL, ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _save(ds: Dataset, path: Path, sop_class: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _patient_study(ds: Dataset, study: dict) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Lung", "LUNG1-000", "19500101", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study["study_uid"], "1", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20000101", "120000", ""
    ds.FrameOfReferenceUID = study["frame_uid"]


def ct_slice(s: int, study: dict, series_uid: str, position: np.ndarray | None = None, grid: Grid = SMALL) -> Dataset:
    ds = Dataset()
    _patient_study(ds, study)
    ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", series_uid, 2, s + 1
    ds.Manufacturer, ds.PositionReferenceIndicator = "test", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [round(float(v), 10) for v in np.concatenate([ROW_DIR, COL_DIR])]
    ds.ImagePositionPatient = [round(float(v), 10) for v in (slice_position(s) if position is None else position)]
    ds.PixelSpacing, ds.SliceThickness = [grid.row_spacing, grid.column_spacing], SLICE_SPACING
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = grid.rows, grid.columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.PixelData = raw_pixels(s, grid).tobytes()
    return ds


def square(i0: float, i1: float, j0: float, j1: float, s: int) -> list[float]:
    """ContourData (LPS mm triplets) of the voxel-space rectangle [i0, i1] x [j0, j1] on slice s."""
    corners = [(i0, j0), (i1, j0), (i1, j1), (i0, j1)]
    return [round(float(v), 6) for i, j in corners for v in voxel_to_lps(i, j, s)]


# Structures of the synthetic RTSTRUCT: GTV-1 fills columns 3..7 x rows 2..5 on slices 2..4 (contour on voxel edges);
# "Lung:Left" is a ring on slice 5: columns 1..12 x rows 1..10 minus columns 4..8 x rows 3..6.
GTV_CONTOURS = [square(2.5, 7.5, 1.5, 5.5, s) for s in (2, 3, 4)]
RING_CONTOURS = [square(0.5, 12.5, 0.5, 10.5, 5), square(3.5, 8.5, 2.5, 6.5, 5)]


def expected_gtv() -> np.ndarray:
    mask = np.zeros((COLUMNS, ROWS, N_SLICES), np.uint8)
    mask[3:8, 2:6, 2:5] = 1
    return mask


def expected_ring() -> np.ndarray:
    mask = np.zeros((COLUMNS, ROWS, N_SLICES), np.uint8)
    mask[1:13, 1:11, 5] = 1
    mask[4:9, 3:7, 5] = 0
    return mask


def rtstruct(study: dict, series_uid: str, rois: dict[str, list[list[float]]]) -> Dataset:
    ds = Dataset()
    _patient_study(ds, study)
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 3
    ds.StructureSetLabel = "test"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ContourImageSequence = Sequence()
    for image in study.get("slices", []):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT_STORAGE, image.SOPInstanceUID
        series.ContourImageSequence.append(item)
    study_item = Dataset()
    study_item.ReferencedSOPInstanceUID = study["study_uid"]
    study_item.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = study["frame_uid"]
    frame.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = Sequence(), Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, study["frame_uid"]
        ds.StructureSetROISequence.append(roi)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(observation)
        item = Dataset()
        item.ReferencedROINumber = number
        if contours:
            item.ContourSequence = Sequence()
            for data in contours:
                contour = Dataset()
                contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(data) // 3
                contour.ContourData = data
                item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    return ds


DEFAULT_ROIS = {"GTV-1": GTV_CONTOURS, "Lung:Left": RING_CONTOURS, "Esophagus": []}


def write_case(
    case: Path,
    flat: bool = False,
    slices: range | list[int] | None = None,
    rois: dict | None = None,
    grid: Grid = SMALL,
) -> dict:
    """Write a case: CT slices (files named against their order) and an RTSTRUCT, nested TCIA-style or flat.

    ``slices`` defaults to all of the grid's; ``rois=False`` writes no RTSTRUCT.
    """
    study = {"study_uid": generate_uid(), "frame_uid": generate_uid(), "series_uid": generate_uid()}
    ct_folder = case if flat else case / "01-01-2000-NA-study-12345" / "2.000000-CT-67890"
    rt_folder = case if flat else case / "01-01-2000-NA-study-12345" / "3.000000-RTSTRUCT-13579"
    study["slices"] = []
    for s in range(grid.slices) if slices is None else slices:
        ds = ct_slice(s, study, study["series_uid"], grid=grid)
        study["slices"].append(ds)
        _save(ds, ct_folder / f"1-{grid.slices - s:02d}.dcm", CT_STORAGE)
    if rois is not False:
        _save(
            rtstruct(study, study["series_uid"], DEFAULT_ROIS if rois is None else rois),
            rt_folder / "1-1.dcm",
            RTSTRUCT_STORAGE,
        )
    study["ct_folder"], study["rt_folder"] = ct_folder, rt_folder
    return study


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine, image.get_data_dtype()


def test_ct_hounsfield_units_and_affine_match_the_dicom_geometry(tmp_path):
    write_case(tmp_path / "LUNG1-000")
    with pytest.warns(UserWarning, match="Esophagus"):
        entry = d2n.convert_case(tmp_path / "LUNG1-000", tmp_path / "out")
    assert entry["image"] == "LUNG1-000/ct.nii.gz"
    ct, affine, dtype = load(tmp_path / "out" / entry["image"])
    assert dtype == np.int16 and ct.shape == (COLUMNS, ROWS, N_SLICES)
    np.testing.assert_array_equal(ct, expected_hu())
    np.testing.assert_allclose(affine, expected_ras_affine(), atol=1e-5)
    # Independent check through DICOM's own voxel -> patient formula, then LPS -> RAS.
    for i, j, k in [(0, 0, 0), (COLUMNS - 1, 0, 3), (0, ROWS - 1, N_SLICES - 1), (5, 7, 2)]:
        ras = affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(ras[:3], voxel_to_lps(i, j, k) * [-1, -1, 1], atol=1e-5)
    header = nib.load(tmp_path / "out" / entry["image"]).header
    np.testing.assert_allclose(header.get_zooms(), (COLUMN_SPACING, ROW_SPACING, SLICE_SPACING), rtol=1e-5)


def test_rtstruct_contours_become_exact_masks_with_holes(tmp_path):
    write_case(tmp_path / "LUNG1-000")
    with pytest.warns(UserWarning, match=r"ROI 'Esophagus' \(number 3\) has no closed planar contours; skipped"):
        entry = d2n.convert_case(tmp_path / "LUNG1-000", tmp_path / "out", case_id="case-7")
    assert entry == {
        "case_id": "case-7",
        "image": "case-7/ct.nii.gz",
        "masks": {"GTV-1": "case-7/masks/GTV-1.nii.gz", "Lung_Left": "case-7/masks/Lung_Left.nii.gz"},
    }
    ct_affine = load(tmp_path / "out" / entry["image"])[1]
    gtv, affine, dtype = load(tmp_path / "out" / entry["masks"]["GTV-1"])
    assert dtype == np.uint8
    np.testing.assert_array_equal(affine, ct_affine)
    np.testing.assert_array_equal(gtv, expected_gtv())
    ring = load(tmp_path / "out" / entry["masks"]["Lung_Left"])[0]
    np.testing.assert_array_equal(ring, expected_ring())
    assert ring[4:9, 3:7, 5].sum() == 0 and ring[1:13, 1:11, 5].sum() == 12 * 10 - 5 * 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case-7"]  # no temporary folder left


def test_flat_folder_with_other_files_and_a_localizer(tmp_path):
    case = tmp_path / "LUNG1-000"
    study = write_case(case, flat=True, rois={"GTV-1": GTV_CONTOURS})
    (case / "README.txt").write_text("not DICOM")
    scout = ct_slice(0, study, generate_uid())
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _save(scout, case / "scout.dcm", CT_STORAGE)
    other = rtstruct(study, study["series_uid"], {})
    other.Modality = "RTPLAN"
    _save(other, case / "plan" / "rtplan", RTSTRUCT_STORAGE)  # no .dcm suffix: found by its preamble, ignored
    found = d2n.find_dicom_files(case)
    assert [len(v) for v in found.ct_series.values()] == [N_SLICES] and len(found.rtstructs) == 1
    assert found.ignored == {"CT localizer": 1, "RTPLAN": 1}
    entry = d2n.convert_case(case, tmp_path / "out")
    np.testing.assert_array_equal(load(tmp_path / "out" / entry["image"])[0], expected_hu())
    np.testing.assert_array_equal(load(tmp_path / "out" / entry["masks"]["GTV-1"])[0], expected_gtv())


def seg_labels() -> np.ndarray:
    """(frames, rows, columns, segments) SEG content: Heart on slices 1 and 6; a GTV-1 on slice 3."""
    labels = np.zeros((N_SLICES, ROWS, COLUMNS, 2), bool)
    labels[1, 4:9, 2:6, 0] = labels[6, 0:3, 10:16, 0] = True
    labels[3, 2:6, 3:8, 1] = True
    return labels


def expected_heart() -> np.ndarray:
    expected = np.zeros((COLUMNS, ROWS, N_SLICES), np.uint8)
    expected[2:6, 4:9, 1] = expected[10:16, 0:3, 6] = 1
    return expected


SEG_CODES = {"Heart": "80891009", "GTV-1": "108369006"}  # SNOMED CT codes; other segments are coded as Tissue


def write_seg(
    case: Path, study: dict, kind: str = "BINARY", edit=None, segments: dict[str, np.ndarray] | None = None
) -> Path:
    """Write a highdicom SEG on the case's CT; ``edit(seg)`` may spoil it before saving.

    ``segments`` maps names to (columns, rows, slices) masks; by default the Heart and GTV-1 of :func:`seg_labels`.
    """
    hd = pytest.importorskip("highdicom")
    if segments is None:
        labels, names = seg_labels(), ["Heart", "GTV-1"]
    else:
        labels = np.stack([np.transpose(mask, (2, 1, 0)) for mask in segments.values()], axis=-1).astype(bool)
        names = list(segments)
    if kind == "FRACTIONAL":  # 0.8 inside; a 0.3 halo, below the 0.5 threshold, around the Heart on slice 1
        halo = np.zeros_like(labels)
        halo[1, 3:10, 1:7, 0] = True
        labels = np.where(labels, 0.8, np.where(halo, 0.3, 0.0)).astype(np.float32)
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=tissue,
            segmented_property_type=hd.sr.CodedConcept(SEG_CODES.get(label, "85756007"), "SCT", label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=study["slices"],
        pixel_array=labels,
        segmentation_type=getattr(hd.seg.SegmentationTypeValues, kind),
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=4,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    if edit is not None:
        edit(seg)
    path = case / "seg" / "1-1.dcm"
    path.parent.mkdir(parents=True)
    seg.save_as(path)
    return path


@pytest.mark.parametrize("kind", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_seg_segments_are_placed_on_the_ct_grid(tmp_path, kind):
    case = tmp_path / "LUNG1-000"
    study = write_case(case, rois={"GTV-1": GTV_CONTOURS})
    write_seg(case, study, kind)
    with pytest.warns(UserWarning, match="segment 'GTV-1' is also a structure of the RTSTRUCT"):
        entry = d2n.convert_case(case, tmp_path / "out")
    assert sorted(entry["masks"]) == ["GTV-1", "Heart"]
    np.testing.assert_array_equal(load(tmp_path / "out" / entry["masks"]["Heart"])[0], expected_heart())
    np.testing.assert_array_equal(load(tmp_path / "out" / entry["masks"]["GTV-1"])[0], expected_gtv())


def _shift_first_frame(seg) -> None:
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [
        float(v) + 0.3 * COLUMN_SPACING * d for v, d in zip(position.ImagePositionPatient, ROW_DIR)
    ]


def _other_spacing(seg) -> None:
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.7, COLUMN_SPACING]


def _other_series(seg) -> None:
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"


def _unknown_segment(seg) -> None:
    seg.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 7


@pytest.mark.parametrize(
    "edit, error",
    [
        (_shift_first_frame, r"1-1.dcm: frame 1 at .* does not lie on a voxel of the CT grid"),
        (
            _other_spacing,
            r"1-1.dcm: frame 1 has orientation .* pixel spacing \[0.7, 0.6\].* only SEGs on the CT's grid",
        ),
        (_other_series, r"1-1.dcm: this SEG references CT series 1.2.3.4, but the CT series found in the case is"),
        (_unknown_segment, r"1-1.dcm: frame 1 refers to segment 7; the SEG describes segments \[1, 2\]"),
    ],
)
def test_bad_seg(tmp_path, edit, error):
    study = write_case(tmp_path / "case", rois=False)
    write_seg(tmp_path / "case", study, edit=edit)
    with pytest.raises(ValueError, match=error):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_main_converts_one_case_and_updates_dataset_json(tmp_path, capsys):
    write_case(tmp_path / "LUNG1-001", rois={"GTV-1": GTV_CONTOURS})
    write_case(tmp_path / "LUNG1-002", rois={"Lung:Left": RING_CONTOURS})
    out = tmp_path / "dataset"
    d2n.main(str(tmp_path / "LUNG1-002"), out=str(out))
    d2n.main(str(tmp_path / "LUNG1-001"), out=str(out))
    assert "masks: GTV-1" in capsys.readouterr().out
    description = json.loads((out / "dataset.json").read_text())
    assert description["numTraining"] == 2
    assert [e["case_id"] for e in description["training"]] == ["LUNG1-001", "LUNG1-002"]
    assert description["training"][1]["masks"] == {"Lung_Left": "LUNG1-002/masks/Lung_Left.nii.gz"}
    assert all((out / e["image"]).is_file() for e in description["training"])
    with pytest.raises(FileExistsError, match="LUNG1-001 already exists"):
        d2n.main(str(tmp_path / "LUNG1-001"), out=str(out))


def test_convert_collection_stops_or_skips_bad_cases(tmp_path):
    root = tmp_path / "NSCLC"
    write_case(root / "LUNG1-001", rois={"GTV-1": GTV_CONTOURS})
    write_case(root / "LUNG1-002", rois=False)  # CT only: converted with a warning and no masks
    (root / "LUNG1-003").mkdir()  # no DICOM at all
    with pytest.warns(UserWarning, match="no RTSTRUCT or SEG"), pytest.raises(FileNotFoundError, match="no CT series"):
        d2n.convert_collection(root, tmp_path / "out")
    listed = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert [e["case_id"] for e in listed["training"]] == ["LUNG1-001", "LUNG1-002"]
    with pytest.warns(UserWarning, match=r"1 case\(s\) skipped:\nLUNG1-003"):
        path = d2n.convert_collection(root, tmp_path / "out", skip_errors=True, skip_existing=True)
    listed = json.loads(path.read_text())
    assert listed["numTraining"] == 2 and listed["training"][1]["masks"] == {}
    assert listed["training"][0]["masks"] == {"GTV-1": "LUNG1-001/masks/GTV-1.nii.gz"}


# --- round trips through the tools that write and read RTSTRUCTs and SEGs -------------------------------------------


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks (1.0: the same voxels)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def disc(radius: float, centre: tuple[float, float], grid: Grid = ROUND_TRIP) -> np.ndarray:
    """(columns, rows) voxels whose centre lies strictly within ``radius`` voxels of ``centre`` (i, j)."""
    i, j = np.mgrid[: grid.columns, : grid.rows]
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 < radius**2


def round_trip_masks() -> dict[str, np.ndarray]:
    """(columns, rows, slices) masks on the ROUND_TRIP grid, all in one RTSTRUCT or SEG.

    "disc": the issue's disc of radius 10 (305 voxels) on 12 slices; "sphere": a disc whose radius changes from slice
    to slice; "ring": holes on 8 slices, with an island in the hole on one; "thin": one voxel wide structures (a T of
    lines, a diagonal line, one voxel, two voxels).
    """
    shape = (ROUND_TRIP.columns, ROUND_TRIP.rows, ROUND_TRIP.slices)
    masks = {name: np.zeros(shape, bool) for name in ("disc", "sphere", "ring", "thin")}
    masks["disc"][:, :, 6:18] = disc(10, (19, 20))[:, :, None]
    for s in range(4, 21):
        masks["sphere"][:, :, s] = disc(11 * math.sqrt(1 - ((s - 12) / 9) ** 2), (21.3, 18.6))
    masks["ring"][:, :, 2:10] = (disc(12, (20, 20)) & ~disc(5, (18.5, 21)))[:, :, None]
    masks["ring"][:, :, 5] |= disc(2, (18.5, 21))
    thin = masks["thin"][:, :, 10:14]
    thin[3:37, 30], thin[8, 2:31] = True, True
    thin[np.arange(24, 36), np.arange(2, 14)] = True
    thin[37, 20], thin[30:32, 22] = True, True
    return masks


def _normal_order(grid: Grid) -> np.ndarray:
    """Slice indices (InstanceNumber order) sorted by position along the normal: rt-utils' slice order."""
    return np.argsort([float(slice_position(s) @ NORMAL) for s in range(grid.slices)])


def to_rt_utils(mask: np.ndarray, grid: Grid = ROUND_TRIP) -> np.ndarray:
    """Our (columns, rows, slices) layout -> rt-utils' (rows, columns, slices along the normal)."""
    return mask.transpose(1, 0, 2)[:, :, _normal_order(grid)].astype(bool)


def from_rt_utils(mask: np.ndarray, grid: Grid = ROUND_TRIP) -> np.ndarray:
    """rt-utils' (rows, columns, slices along the normal) -> our (columns, rows, slices) layout."""
    ours = np.zeros((grid.columns, grid.rows, grid.slices), bool)
    ours[:, :, _normal_order(grid)] = mask.transpose(1, 0, 2)
    return ours


def write_rt_utils_rtstruct(study: dict, masks: dict[str, np.ndarray], approximate_contours: bool = True) -> Path:
    """Write ``masks`` as an RTSTRUCT with rt-utils (contours through the centres of the boundary voxels)."""
    rt_utils = pytest.importorskip("rt_utils")
    builder = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(study["ct_folder"]))
    for name, mask in masks.items():
        builder.add_roi(mask=to_rt_utils(mask), name=name, approximate_contours=approximate_contours)
    path = study["rt_folder"] / "rt-utils.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    builder.save(str(path))
    return path


def read_with_rt_utils(study: dict, path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """rt-utils' reading of an RTSTRUCT, in our layout."""
    rt_utils = pytest.importorskip("rt_utils")
    structures = rt_utils.RTStructBuilder.create_from(str(study["ct_folder"]), str(path))
    return {name: from_rt_utils(structures.get_roi_mask_by_name(name)) for name in names}


def on_grid(image: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """``image``'s voxels reordered onto ``reference``'s grid (the same voxels, axes possibly permuted or flipped)."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.io_orientation(reference.affine))
    moved = image.as_reoriented(transform)
    np.testing.assert_allclose(moved.affine, reference.affine, atol=1e-3)
    return np.asarray(moved.dataobj)


def read_with_dcmrtstruct2nii(
    study: dict, path: Path, out: Path, references: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> dict[str, np.ndarray]:
    """dcmrtstruct2nii's reading of an RTSTRUCT: each structure moved onto the grid of its file in ``references``."""
    # dcmrtstruct2nii 5 (the latest release) still calls pydicom.read_file, which pydicom 3 renamed to dcmread.
    monkeypatch.setattr(pydicom, "read_file", pydicom.dcmread, raising=False)
    converter = pytest.importorskip("dcmrtstruct2nii").dcmrtstruct2nii
    converter(str(path), str(study["ct_folder"]), str(out), mask_foreground_value=1, convert_original_dicom=False)
    return {
        name: on_grid(nib.load(out / f"mask_{name}.nii.gz"), nib.load(reference)).astype(bool)
        for name, reference in references.items()
    }


@pytest.mark.parametrize("approximate_contours", [True, False])
def test_rtstruct_written_by_rt_utils_round_trips_exactly(tmp_path, approximate_contours):
    study = write_case(tmp_path / "case", rois=False, grid=ROUND_TRIP)
    masks = round_trip_masks()
    path = write_rt_utils_rtstruct(study, masks, approximate_contours)
    entry = d2n.convert_case(tmp_path / "case", tmp_path / "out")
    assert sorted(entry["masks"]) == sorted(masks)
    oracle = read_with_rt_utils(study, path, list(masks))
    for name, written in masks.items():
        ours = load(tmp_path / "out" / entry["masks"][name])[0].astype(bool)
        assert np.array_equal(ours, written), f"{name}: {int((ours != written).sum())} voxels differ"
        assert dice(ours, written) == 1.0
        np.testing.assert_array_equal(oracle[name], written)  # the writer's own reading agrees too
    per_slice = load(tmp_path / "out" / entry["masks"]["disc"])[0].sum(axis=(0, 1))
    assert per_slice.tolist() == [0] * 6 + [305] * 12 + [0] * 6  # the issue: 280 with the half-open rule


def test_seg_written_by_highdicom_round_trips_exactly(tmp_path):
    study = write_case(tmp_path / "case", rois=False, grid=ROUND_TRIP)
    masks = round_trip_masks()
    write_seg(tmp_path / "case", study, segments=masks)
    entry = d2n.convert_case(tmp_path / "case", tmp_path / "out")
    assert sorted(entry["masks"]) == sorted(masks)
    for name, written in masks.items():
        np.testing.assert_array_equal(load(tmp_path / "out" / entry["masks"][name])[0], written.astype(np.uint8))


def polygon_on_slice(radius: float, centre: tuple[float, float], n: int, phase: float = 0.0) -> np.ndarray:
    """(n, 2) voxel (i, j) vertices of a regular n-gon: a contour that does not pass through voxel centres."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)


# (slice, (n, 2) voxel vertices) of contours off the voxel centres: a circle on 3 slices, a ring (hole) on 2 slices,
# and a sliver 1.3 voxels wide at a slant.
OFF_CENTRE = {
    "circle": [(s, polygon_on_slice(7.3, (19.37, 20.61), 40)) for s in (3, 4, 5)],
    "ring": [
        (s, vertices)
        for s in (8, 9)
        for vertices in (polygon_on_slice(11.2, (20.2, 19.7), 48), polygon_on_slice(4.6, (18.9, 21.3), 24, 0.3))
    ],
    "sliver": [(12, np.array([[5.2, 33.4], [33.7, 30.1], [33.9, 31.4], [5.4, 34.7]]))],
}


def off_centre_rtstruct(study: dict) -> Dataset:
    """An RTSTRUCT of :data:`OFF_CENTRE`, each contour naming its CT slice (rt-utils finds contours that way)."""
    rois = {
        name: [[float(v) for i, j in vertices for v in ROUND_TRIP.to_lps(i, j, s)] for s, vertices in contours]
        for name, contours in OFF_CENTRE.items()
    }
    ds = rtstruct(study, study["series_uid"], rois)
    for item, contours in zip(ds.ROIContourSequence, OFF_CENTRE.values()):
        for contour, (s, _) in zip(item.ContourSequence, contours):
            image = Dataset()
            image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = CT_STORAGE, study["slices"][s].SOPInstanceUID
            contour.ContourImageSequence = Sequence([image])
    return ds


def distance_to_contours(voxels: np.ndarray, name: str) -> np.ndarray:
    """Distance (voxels) from each (i, j, s) voxel centre to the nearest edge of OFF_CENTRE[name] on its slice."""
    distances = np.full(len(voxels), np.inf)
    for s, vertices in OFF_CENTRE[name]:
        here = voxels[:, 2] == s
        points, start = voxels[here, :2].astype(np.float64), vertices
        edge = np.roll(vertices, -1, axis=0) - start
        t = np.clip(((points[:, None] - start) * edge).sum(-1) / (edge * edge).sum(-1), 0, 1)
        nearest = np.linalg.norm(points[:, None] - (start + t[..., None] * edge), axis=-1).min(axis=1)
        distances[here] = np.minimum(distances[here], nearest)
    return distances


# How far from the contour the oracles' voxels may differ from ours. rt-utils rounds the vertices to whole voxels and
# fills with the boundary included, so its masks grow by up to one voxel (Dice 0.91 on the circle, 0.66 on the
# sliver); dcmrtstruct2nii tests voxel centres against the polygon as we do and differs only at centres on a contour
# (it XORs a hole's contour with its boundary included, so it drops those).
OFF_CENTRE_TOLERANCE = {"rt-utils": 1.0, "dcmrtstruct2nii": 0.01}


def test_contours_off_voxel_centres_agree_with_rt_utils_and_dcmrtstruct2nii(tmp_path, monkeypatch):
    study = write_case(tmp_path / "case", rois=False, grid=ROUND_TRIP)
    path = study["rt_folder"] / "rt.dcm"
    _save(off_centre_rtstruct(study), path, RTSTRUCT_STORAGE)
    entry = d2n.convert_case(tmp_path / "case", tmp_path / "out")
    assert sorted(entry["masks"]) == sorted(OFF_CENTRE)
    ours = {name: tmp_path / "out" / relative for name, relative in entry["masks"].items()}
    oracles = {
        "rt-utils": read_with_rt_utils(study, path, list(OFF_CENTRE)),
        "dcmrtstruct2nii": read_with_dcmrtstruct2nii(study, path, tmp_path / "dcmrtstruct2nii", ours, monkeypatch),
    }
    for name in OFF_CENTRE:
        mask = load(ours[name])[0].astype(bool)
        for oracle, masks in oracles.items():
            differ = np.argwhere(mask != masks[name])
            far = differ[distance_to_contours(differ, name) > OFF_CENTRE_TOLERANCE[oracle]]
            assert not len(far), (
                f"{name}: {oracle} differs from us (Dice {dice(mask, masks[name]):.3f}) farther than "
                f"{OFF_CENTRE_TOLERANCE[oracle]} voxels from the contour, at {far.tolist()}"
            )


def test_slice_mask_reproduces_masks_from_rt_utils_contours():
    """Random masks (blobs with holes, speckle, one voxel wide outlines) -> rt-utils' contours -> the same mask."""
    image_helper = pytest.importorskip("rt_utils.image_helper")
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for trial in range(90):
        shape = (int(rng.integers(6, 40)), int(rng.integers(6, 40)))
        noise = rng.standard_normal(shape)
        if trial % 3 == 0:
            mask = ndimage.gaussian_filter(noise, rng.uniform(0.5, 3)) > rng.uniform(-0.3, 0.5)
        elif trial % 3 == 1:
            mask = rng.random(shape) < rng.uniform(0.05, 0.6)
        else:
            mask = ndimage.gaussian_filter(noise, 2) > 0
            mask ^= ndimage.binary_erosion(mask)
        for approximate in (True, False):
            contours = image_helper.find_mask_contours(mask.T.astype(np.uint8), approximate)[0] if mask.any() else []
            polygons = [(np.array(c, float)[:, 0], np.array(c, float)[:, 1]) for c in contours]
            np.testing.assert_array_equal(d2n.slice_mask(polygons, shape), mask, err_msg=f"trial {trial}")


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([2, 9, 9, 2], [1, 1, 7, 7]),  # square through centres
        ([1, 8, 4], [1, 3, 8]),  # triangle, slanted edges through some centres
        ([0.5, 8.5, 8.5, 4.5, 4.5, 0.5], [0.5, 0.5, 7.5, 7.5, 3.5, 3.5]),  # concave L on voxel edges
        ([2, 6, 6, 4, 4, 2], [2, 2, 6, 6, 2.5, 2.5]),  # touching itself
        ([1.2, 9.7, 4.1], [0.3, 3.9, 8.8]),  # off the centres
        ([-3, 14, 14, -3], [2, 2, 20, 20]),  # beyond the grid
    ],
)
def test_contour_centres_and_polygon_mask_agree_with_scikit_image(xs, ys):
    """scikit-image's grid_points_in_poly labels centres outside (0), inside (1), on a vertex (2) or an edge (3)."""
    measure = pytest.importorskip("skimage.measure")
    shape = (11, 9)
    labels = measure.grid_points_in_poly(shape, np.column_stack([xs, ys]).astype(float), binarize=False)
    on = d2n.contour_centres(np.array(xs, float), np.array(ys, float), shape)
    np.testing.assert_array_equal(on, labels >= 2)
    np.testing.assert_array_equal(
        d2n.polygon_mask(np.array(xs, float), np.array(ys, float), shape)[~on], labels[~on] == 1
    )
    np.testing.assert_array_equal(d2n.slice_mask([(np.array(xs, float), np.array(ys, float))], shape), labels > 0)


def test_centres_within_the_tolerance_of_a_contour_are_on_it():
    xs, ys, shape = np.array([2.0, 9.0, 9.0, 2.0]), np.array([1.0, 1.0, 7.0, 7.0]), (12, 10)
    through_centres = np.zeros(shape, bool)
    through_centres[2:10, 1:8] = True
    np.testing.assert_array_equal(d2n.slice_mask([(xs, ys)], shape), through_centres)
    assert d2n.polygon_mask(xs, ys, shape).sum() == 7 * 6  # the half-open rule alone drops the high edges
    for shift in (0.004, -0.004):  # rounding in decimal strings or single precision: still through the centres
        np.testing.assert_array_equal(d2n.slice_mask([(xs + shift, ys - shift)], shape), through_centres)
    off = d2n.slice_mask([(xs - 0.05, ys - 0.05)], shape)  # 0.05 voxels off: the centres inside count
    np.testing.assert_array_equal(off, through_centres & (np.arange(12)[:, None] < 9) & (np.arange(10) < 7))
    # Contours without an interior (a line there and back, one point) hold the centres they pass through; scikit-image
    # labels such centres outside (its edge test needs an edge that crosses the row).
    line = d2n.slice_mask(
        [(np.array([3.0, 3.0, 9.0]), np.array([4.0, 4.0, 4.0])), (np.array([5.0]), np.array([8.0]))], shape
    )
    assert np.argwhere(line).tolist() == [[3, 4], [4, 4], [5, 4], [5, 8], [6, 4], [7, 4], [8, 4], [9, 4]]


# --- bad input ---------------------------------------------------------------------------------------------------


def test_no_ct_series(tmp_path):
    case = tmp_path / "case"
    study = write_case(case)
    for path in study["ct_folder"].iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"case: no CT series found \(files by modality: RTSTRUCT: 1\)"):
        d2n.convert_case(case, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_several_ct_series_are_listed_and_one_can_be_chosen(tmp_path):
    case = tmp_path / "case"
    study = write_case(case, rois=False)
    second = generate_uid()
    for s in range(N_SLICES):
        _save(ct_slice(s, study, second), case / "other-series" / f"{s}.dcm", CT_STORAGE)
    with pytest.raises(ValueError, match="expected one CT series, found 2") as error:
        d2n.convert_case(case, tmp_path / "out")
    message = str(error.value)
    assert study["series_uid"] in message and second in message and "other-series" in message
    with pytest.warns(UserWarning, match="no RTSTRUCT"):
        d2n.convert_case(case, tmp_path / "out", series_uid=second)
    with pytest.raises(ValueError, match="CT series 1.2.3 not found"):
        d2n.convert_case(case, tmp_path / "out2", series_uid="1.2.3")


def test_missing_slices_are_located(tmp_path):
    write_case(tmp_path / "case", slices=[0, 1, 2, 5, 6, 7])
    first, second = (float(slice_position(s) @ NORMAL) for s in (5, 2))
    with pytest.raises(ValueError, match=rf"missing 2 slice\(s\).*2 between positions {first:g} and {second:g} mm"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_inconsistent_slice_spacing(tmp_path):
    study = write_case(tmp_path / "case")
    moved = ct_slice(3, study, study["series_uid"], position=slice_position(3) + 0.7 * NORMAL)
    _save(moved, study["ct_folder"] / f"1-{N_SLICES - 3:02d}.dcm", CT_STORAGE)
    with pytest.raises(ValueError, match=r"inconsistent slice spacing: gaps of \[1.8, 2.5, 3.2\] mm"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_slices_at_the_same_position(tmp_path):
    study = write_case(tmp_path / "case")
    twin = ct_slice(N_SLICES, study, study["series_uid"], position=slice_position(4))
    _save(twin, study["ct_folder"] / "twin.dcm", CT_STORAGE)
    with pytest.raises(ValueError, match="two slices at the same position .* 1-04.dcm and twin.dcm"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_rtstruct_of_another_series_names_both_uids_and_leaves_nothing(tmp_path):
    case = tmp_path / "case"
    study = write_case(case, rois=False)
    other = generate_uid()
    _save(rtstruct(study, other, {"GTV-1": GTV_CONTOURS}), case / "rt.dcm", RTSTRUCT_STORAGE)
    with pytest.raises(
        ValueError, match=rf"rt.dcm: this RTSTRUCT references CT series {other}.*is {study['series_uid']}"
    ):
        d2n.convert_case(case, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the staging folder was removed


def test_corrupt_dcm_file_is_named(tmp_path):
    study = write_case(tmp_path / "case")
    (study["ct_folder"] / "broken.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"broken.dcm: unreadable DICOM file"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_truncated_pixel_data_is_named(tmp_path):
    study = write_case(tmp_path / "case")
    path = study["ct_folder"] / "1-03.dcm"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"1-03.dcm: cannot decode the pixel data of this CT slice"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def _rewrite_slice(study: dict, s: int, **changes) -> None:
    """Save slice s again with some header attributes changed (None deletes one)."""
    ds = ct_slice(s, study, study["series_uid"])
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    _save(ds, study["ct_folder"] / f"1-{N_SLICES - s:02d}.dcm", CT_STORAGE)


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"ImagePositionPatient": None}, r"1-06.dcm: CT slice has no ImagePositionPatient"),
        ({"Rows": ROWS + 1}, r"1-06.dcm: CT series .* mixes slices of different size \(Rows, Columns\): \[13, 16\]"),
        ({"PixelSpacing": [0.7, 0.6]}, r"1-06.dcm: CT series .* mixes slices of different PixelSpacing"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}, r"1-06.dcm: .* different ImageOrientationPatient"),
        ({"InstanceNumber": 1}, r"repeats InstanceNumber \[1\] \(files \['1-06.dcm', '1-08.dcm'\]\)"),
        ({"InstanceNumber": 99}, r"the InstanceNumber order of the slices does not follow their positions"),
    ],
)
def test_inconsistent_ct_headers(tmp_path, changes, error):
    study = write_case(tmp_path / "case", rois=False)
    _rewrite_slice(study, 2, **changes)
    with pytest.raises(ValueError, match=error):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_bad_ct_layouts(tmp_path):
    study = write_case(tmp_path / "tilted", rois=False)
    for s in range(N_SLICES):
        _rewrite_slice(study, s, ImageOrientationPatient=[1, 0, 0, 0.5, 0.5, 0])
    with pytest.raises(
        ValueError, match=r"ImageOrientationPatient \[1.0, 0.0, 0.0, 0.5, 0.5, 0.0\] is not two orthogonal"
    ):
        d2n.convert_case(tmp_path / "tilted", tmp_path / "out")
    write_case(tmp_path / "single", slices=[3], rois=False)
    with pytest.raises(ValueError, match="has 1 slice; a volume needs at least 2"):
        d2n.convert_case(tmp_path / "single", tmp_path / "out")
    study = write_case(tmp_path / "split", rois=False)
    (study["ct_folder"] / "1-01.dcm").rename(tmp_path / "split" / "1-01.dcm")
    with pytest.raises(ValueError, match=r"CT series .* is spread over 2 folders"):
        d2n.convert_case(tmp_path / "split", tmp_path / "out")
    study = write_case(tmp_path / "glob", rois=False)
    study["ct_folder"].rename(study["ct_folder"].with_name("CT[1]"))
    with pytest.raises(ValueError, match=r"CT\[1\]: the CT series' folder name holds glob characters"):
        d2n.convert_case(tmp_path / "glob", tmp_path / "out")


def test_rtstruct_masks_of_a_dataset_in_memory(tmp_path):
    study = write_case(tmp_path / "case", rois=False)
    series = d2n.ct_series_geometry(*d2n.select_ct_series(d2n.find_dicom_files(tmp_path / "case"), tmp_path / "case"))
    assert series.shape == (COLUMNS, ROWS, N_SLICES) and series.files[0].name == f"1-{N_SLICES:02d}.dcm"
    np.testing.assert_allclose(series.affine_ras(), expected_ras_affine(), atol=1e-6)
    ds = rtstruct(study, study["series_uid"], {"GTV-1": [*GTV_CONTOURS, square(1.5, 3.5, 1.5, 3.5, 20)]})
    listed_only = Dataset()  # a structure named in StructureSetROISequence with no ROIContourSequence item
    listed_only.ROINumber, listed_only.ROIName = 9, "Heart"
    ds.StructureSetROISequence.append(listed_only)
    with pytest.warns(UserWarning) as record:
        ((name, mask),) = list(d2n.rtstruct_masks(ds, "rt.dcm", series))
    assert [str(w.message) for w in record] == [
        "rt.dcm: ROI 'GTV-1': 1 of 4 contour(s) lie outside the CT slices; ignored.",
        "rt.dcm: ROI 'Heart' (number 9) has no contours; skipped.",
    ]
    assert name == "GTV-1" and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected_gtv())
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = GTV_CONTOURS[0][:-1]
    with pytest.raises(ValueError, match=r"rt.dcm: ROI 'GTV-1' has ContourData of 11 values"):
        list(d2n.rtstruct_masks(ds, "rt.dcm", series))
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = GTV_CONTOURS[0]
    del ds.ROIContourSequence[0].ContourSequence[-1]  # the contour off the volume
    del ds.StructureSetROISequence[-1]
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    del frame.RTReferencedStudySequence
    frame.FrameOfReferenceUID = "1.2.3"
    with pytest.raises(ValueError, match=rf"uses frame of reference 1.2.3, but .* uses {study['frame_uid']}"):
        list(d2n.rtstruct_masks(ds, "rt.dcm", series))
    del ds.ReferencedFrameOfReferenceSequence
    with pytest.warns(UserWarning, match="this RTSTRUCT names no referenced series"):
        assert len(list(d2n.rtstruct_masks(ds, "rt.dcm", series))) == 1


def test_several_rtstructs(tmp_path):
    study = write_case(tmp_path / "case")
    _save(rtstruct(study, study["series_uid"], {}), tmp_path / "case" / "second.dcm", RTSTRUCT_STORAGE)
    with pytest.raises(ValueError, match="expected at most one RTSTRUCT, found 2: .*second.dcm"):
        d2n.convert_case(tmp_path / "case", tmp_path / "out")


def test_bad_case_id_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="case_id 'a/b' is not usable as a folder name"):
        d2n.convert_case(tmp_path, tmp_path / "out", case_id="a/b")
    with pytest.raises(FileNotFoundError, match="case folder .*nowhere does not exist"):
        d2n.convert_case(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no case folders found"):
        d2n.convert_collection(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="case_id and series_uid apply to a single case"):
        d2n.main(str(tmp_path), out=str(tmp_path / "out"), case_id="x", collection=True)
    (tmp_path / "root" / "LUNG1-001").mkdir(parents=True)
    (tmp_path / "out" / "LUNG1-001").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="LUNG1-001 exists but has no ct.nii.gz"):
        d2n.convert_collection(tmp_path / "root", tmp_path / "out", skip_existing=True)


def test_invalid_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        d2n.update_dataset_json(tmp_path, [])
    (tmp_path / "dataset.json").write_text("[]")
    with pytest.raises(ValueError, match="expected an object with a 'training' list, got list"):
        d2n.update_dataset_json(tmp_path, [])


def test_missing_pydicom_or_highdicom_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(ImportError, match=r"needs pydicom .*pip install -e '\.\[dicom\]'"):
        d2n.find_dicom_files(tmp_path)
    with pytest.raises(ImportError, match=r"needs highdicom: pip install -e '\.\[dicom\]'"):
        list(d2n.seg_masks(tmp_path / "seg.dcm", None))


# --- helpers -----------------------------------------------------------------------------------------------------


def _reference_even_odd(xs, ys, shape):
    """Per-voxel crossing-number test written plainly, to check the vectorised fill against."""
    inside = np.zeros(shape, bool)
    n = len(xs)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for v in range(n):
                x0, y0, x1, y1 = xs[v], ys[v], xs[(v + 1) % n], ys[(v + 1) % n]
                if (y0 > j) != (y1 > j) and i < x0 + (j - y0) * (x1 - x0) / (y1 - y0):
                    inside[i, j] = not inside[i, j]
    return inside


@pytest.mark.parametrize(
    "xs, ys",
    [
        ([1.2, 9.7, 4.1], [0.3, 3.9, 8.8]),  # triangle
        ([0.5, 8.5, 8.5, 4.5, 4.5, 0.5], [0.5, 0.5, 7.5, 7.5, 3.5, 3.5]),  # concave L
        ([-3.0, 14.0, 14.0, -3.0], [2.0, 2.0, 20.0, 20.0]),  # beyond the grid, vertices on centres
        ([2.0, 8.0, 3.0, 8.0, 2.0], [1.0, 2.0, 5.0, 8.0, 9.0]),  # self-crossing star-ish
    ],
)
def test_polygon_mask_matches_the_crossing_number_rule(xs, ys):
    shape = (11, 9)
    mask = d2n.polygon_mask(np.array(xs), np.array(ys), shape)
    assert mask.shape == shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, _reference_even_odd(xs, ys, shape))
    np.testing.assert_array_equal(d2n.polygon_mask(np.array(xs[::-1]), np.array(ys[::-1]), shape), mask)


def test_polygon_mask_half_open_edges_and_holes():
    outer = d2n.polygon_mask(np.array([2.0, 5.0, 5.0, 2.0]), np.array([1.0, 1.0, 4.0, 4.0]), (8, 6))
    expected = np.zeros((8, 6), bool)
    expected[2:5, 1:4] = True  # low edges inside, high edges outside
    np.testing.assert_array_equal(outer, expected)
    hole = d2n.polygon_mask(np.array([2.5, 3.5, 3.5, 2.5]), np.array([1.5, 1.5, 2.5, 2.5]), (8, 6))
    assert (outer ^ hole).sum() == 8 and not (outer ^ hole)[3, 2]


def test_sanitise_name():
    assert d2n.sanitise_name("GTV-1") == "GTV-1"
    assert d2n.sanitise_name("Lung/Left: ext?") == "Lung_Left_ ext_"
    assert d2n.sanitise_name(" CTV 1. ") == "CTV 1"
    assert d2n.sanitise_name("..") == "ROI" and d2n.sanitise_name("") == "ROI"
