"""Tests of tools/dicom_to_nifti.py on tiny synthetic DICOM cases written with pydicom (and highdicom for SEG)."""

from __future__ import annotations

import json
import math
import sys
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


def voxel_to_lps(i: float, j: float, s: int) -> np.ndarray:
    """DICOM's own mapping: column i, row j of slice s -> patient LPS mm (PS3.3 C.7.6.2.1.1)."""
    return slice_position(s) + i * COLUMN_SPACING * ROW_DIR + j * ROW_SPACING * COL_DIR


def raw_pixels(s: int) -> np.ndarray:
    """Stored values of slice s, (rows, columns): every voxel differs, so any flip or transpose shows."""
    r, c = np.mgrid[:ROWS, :COLUMNS]
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


def ct_slice(s: int, study: dict, series_uid: str, position: np.ndarray | None = None) -> Dataset:
    ds = Dataset()
    _patient_study(ds, study)
    ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", series_uid, 2, s + 1
    ds.Manufacturer, ds.PositionReferenceIndicator = "test", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [round(float(v), 10) for v in np.concatenate([ROW_DIR, COL_DIR])]
    ds.ImagePositionPatient = [round(float(v), 10) for v in (slice_position(s) if position is None else position)]
    ds.PixelSpacing, ds.SliceThickness = [ROW_SPACING, COLUMN_SPACING], SLICE_SPACING
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLUMNS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
    ds.PixelData = raw_pixels(s).tobytes()
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
    study_item = Dataset()
    study_item.ReferencedSOPInstanceUID = study["study_uid"]
    study_item.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = study["frame_uid"]
    frame.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, study["frame_uid"]
        ds.StructureSetROISequence.append(roi)
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
    case: Path, flat: bool = False, slices: range | list[int] = range(N_SLICES), rois: dict | None = None
) -> dict:
    """Write a case: CT slices (files named against their order) and an RTSTRUCT, nested TCIA-style or flat."""
    study = {"study_uid": generate_uid(), "frame_uid": generate_uid(), "series_uid": generate_uid()}
    ct_folder = case if flat else case / "01-01-2000-NA-study-12345" / "2.000000-CT-67890"
    rt_folder = case if flat else case / "01-01-2000-NA-study-12345" / "3.000000-RTSTRUCT-13579"
    study["slices"] = []
    for s in slices:
        ds = ct_slice(s, study, study["series_uid"])
        study["slices"].append(ds)
        _save(ds, ct_folder / f"1-{N_SLICES - s:02d}.dcm", CT_STORAGE)
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


def write_seg(case: Path, study: dict, kind: str = "BINARY", edit=None) -> Path:
    """Write a highdicom SEG of :func:`seg_labels` on the case's CT; ``edit(seg)`` may spoil it before saving."""
    hd = pytest.importorskip("highdicom")
    labels = seg_labels()
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
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label, code in [(1, "Heart", "80891009"), (2, "GTV-1", "108369006")]
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
