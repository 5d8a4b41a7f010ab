"""Tests of common.transforms.ct and common.data.ct_cases: case discovery, structure names, mask merging, body
isolation, HU checks."""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from common.data.ct_cases import find_ct_cases
from common.data.phantoms.kinds import phantom_grid, write_phantom_dataset
from common.data.phantoms.thorax import thorax_ct_phantom
from common.transforms.ct import (
    DEFAULT_STRUCTURE_SYNONYMS,
    DEFAULT_STRUCTURES,
    AppendMaskChanneld,
    CheckHURange,
    CheckHURanged,
    IsolateBody,
    IsolateBodyd,
    LoadStructureMasksd,
    MergeSegmentationd,
    StructureSynonyms,
    normalise_structure_name,
    read_mask_channel,
)
from common.transforms.io import SafeLoadImaged

LOGGER = "common.transforms.ct"
SHAPE = (6, 5, 4)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    """Two thorax phantoms at 24 voxels (case 1 has nodules GTV-2 and GTV-3)."""
    return write_phantom_dataset("thorax_ct", tmp_path_factory.mktemp("ct") / "lung", n=2, size=24)


def _ct(values: np.ndarray | None = None, name: str = "case/ct.nii.gz") -> MetaTensor:
    data = torch.full((1, *SHAPE), -1000.0) if values is None else torch.as_tensor(values, dtype=torch.float32)
    return MetaTensor(data, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])), meta={"filename_or_obj": name})


def _mask(*boxes: tuple[slice, ...], name: str = "mask.nii.gz", affine: torch.Tensor | None = None) -> MetaTensor:
    data = torch.zeros((1, *SHAPE))
    for box in boxes:
        data[(0, *box)] = 1.0
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])) if affine is None else affine
    return MetaTensor(data, affine=affine, meta={"filename_or_obj": name})


# ---------------------------------------------------------------------------------------------------- find_ct_cases


def test_find_ct_cases_reads_the_datalist(phantom_dir):
    cases = find_ct_cases(phantom_dir)
    assert [case["case_id"] for case in cases] == ["LUNG_phantom_000", "LUNG_phantom_001"]
    first = cases[0]
    assert first["image"] == str(phantom_dir.absolute() / "LUNG_phantom_000" / "ct.nii.gz")
    masks_dir = phantom_dir.absolute() / "LUNG_phantom_000" / "masks"
    assert first["masks"] == {p.name.removesuffix(".nii.gz"): str(p) for p in masks_dir.iterdir()}
    assert {"GTV-2", "GTV-3"} <= set(cases[1]["masks"])


def test_find_ct_cases_scans_case_folders_without_a_datalist(phantom_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(phantom_dir, folder)
    (folder / "dataset.json").unlink()
    (folder / ".staging").mkdir()  # hidden folders are no cases
    (folder / "notes.txt").write_text("not a case")
    scanned = find_ct_cases(folder)
    listed = find_ct_cases(phantom_dir)
    for a, b in zip(scanned, listed):
        assert a["case_id"] == b["case_id"] and a["masks"].keys() == b["masks"].keys()
        assert a["image"] == str(folder.absolute() / a["case_id"] / "ct.nii.gz")


def test_find_ct_cases_datalist_none_scans_folders_and_derives_ids(tmp_path):
    (tmp_path / "P2" / "masks").mkdir(parents=True)
    (tmp_path / "P2" / "ct.nii.gz").touch()
    (tmp_path / "P2" / "masks" / "Lung_L.nii.gz").touch()
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "ct.nii").touch()
    (tmp_path / "dataset.json").write_text("not json")  # ignored with datalist=None
    cases = find_ct_cases(tmp_path, datalist=None)
    assert [(c["case_id"], list(c["masks"])) for c in cases] == [("P1", []), ("P2", ["Lung_L"])]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "P1/ct.nii"}]}))
    assert find_ct_cases(tmp_path)[0] == {"case_id": "P1", "image": str(tmp_path / "P1" / "ct.nii"), "masks": {}}


def test_find_ct_cases_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder .*nowhere' does not exist"):
        find_ct_cases(tmp_path / "nowhere")


def test_find_ct_cases_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="is empty: expected a dataset.json"):
        find_ct_cases(tmp_path)


def test_find_ct_cases_names_a_missing_listed_file(phantom_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(phantom_dir, folder)
    (folder / "LUNG_phantom_001" / "masks" / "Heart.nii.gz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"training\[1\] \(case 'LUNG_phantom_001'\).*masks\['Heart'\] '.*Heart"
    ):
        find_ct_cases(folder)


def test_find_ct_cases_case_folder_without_ct(tmp_path):
    (tmp_path / "P1" / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"case folder '.*P1' has no ct.nii.gz.*found \['masks'\]"):
        find_ct_cases(tmp_path)


def test_find_ct_cases_no_cases(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no CT cases in .*found \['notes.txt'\]"):
        find_ct_cases(tmp_path)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{broken", "not readable JSON"),
        (json.dumps({"training": {"image": "x"}}), "expected a list of cases under 'training'"),
        (json.dumps({"training": [{"masks": {}}]}), r"training\[0\]: expected .* with one CT path"),
        (json.dumps({"training": [{"image": "P/ct.nii.gz", "masks": ["a"]}]}), "'masks' must map structure names"),
        (json.dumps({"training": []}), "no CT cases"),
    ],
)
def test_find_ct_cases_bad_datalist(tmp_path, content, match):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        find_ct_cases(tmp_path)


def test_find_ct_cases_duplicate_ids(tmp_path):
    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "ct.nii.gz").touch()
    entry = {"case_id": "P", "image": "P/ct.nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry, entry]}))
    with pytest.raises(ValueError, match=r"case ids occur more than once .*\['P'\]"):
        find_ct_cases(tmp_path)


# ------------------------------------------------------------------------------------------------ structure names


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("GTV-1", "GTV-1"),
        ("gtv_1", "GTV-1"),
        ("GTV 1", "GTV-1"),
        ("GTV-Primary", "GTV-1"),
        ("Lung_L", "Lung-Left"),
        ("LEFT LUNG", "Lung-Left"),
        ("lung-left", "Lung-Left"),
        ("Lung_R", "Lung-Right"),
        ("right_lung", "Lung-Right"),
        ("HEART", "Heart"),
        ("Oesophagus", "Esophagus"),
        ("spinal cord", "Spinal-Cord"),
        ("SpinalCord", "Spinal-Cord"),
        ("GTV2", "GTV-2"),
        ("gtv_3", "GTV-3"),
        ("GTV-12", "GTV-12"),
        ("GTV-02", "GTV-2"),
        ("PTV", None),
        ("GTV-0", None),
        ("Lungs", None),
    ],
)
def test_synonyms_match_ignoring_case_and_separators(name, canonical):
    assert StructureSynonyms().canonical(name) == canonical


def test_secondary_tumours_are_recognised():
    synonyms = StructureSynonyms()
    assert [synonyms.is_secondary(n) for n in ("GTV-2", "gtv 3", "GTV_10", "GTV-1", "GTV", "Heart")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert normalise_structure_name(" Lung_L - x ") == "lunglx"


def test_synonym_table_from_a_plain_dict_replaces_the_default():
    synonyms = StructureSynonyms({"GTV-1": ["Tumour"], "Lung-Left": "LL"})
    assert synonyms.names == ("GTV-1", "Lung-Left")
    assert synonyms.canonical("tumour") == "GTV-1" and synonyms.canonical("l_l") == "Lung-Left"
    assert synonyms.canonical("Lung_L") is None and synonyms.canonical("GTV-4") == "GTV-4"
    assert set(DEFAULT_STRUCTURES) <= set(DEFAULT_STRUCTURE_SYNONYMS)


@pytest.mark.parametrize(
    "table, match",
    [
        ({"A": ["x"], "B": ["X"]}, "spelling 'X' matches both 'A' and 'B'"),
        ({}, "non-empty mapping"),
        ({"A": ["-"]}, "empty spelling"),
        ({"A": 3}, "expected a name and a list of names"),
    ],
)
def test_synonym_table_errors(table, match):
    with pytest.raises(ValueError, match=match):
        StructureSynonyms(table)


# ---------------------------------------------------------------------------------------------- merging masks


def _ours(caplog) -> list[str]:
    """Warnings logged by the module under test (other libraries may log while files load)."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def _case(**masks) -> dict:
    return {"case_id": "P7", "image": _ct(), "masks": masks}


def test_merge_maps_names_merges_secondaries_and_keeps_ct_meta(caplog):
    primary = (slice(1, 3), slice(1, 3), slice(1, 3))
    nodule_a, nodule_b = (slice(4, 5), slice(0, 1), slice(0, 1)), (slice(5, 6), slice(4, 5), slice(3, 4))
    data = _case(
        gtv_1=_mask(primary),
        **{"GTV-2": _mask(nodule_a), "gtv3": _mask(nodule_b)},
        Lung_L=_mask((slice(0, 3),)),
        **{"Right Lung": _mask((slice(3, 6),)), "Oesophagus": _mask((slice(2, 3), slice(2, 3)))},
        HEART=_mask((slice(1, 4), slice(1, 4), slice(0, 2))),
        PTV=_mask(primary),
        Couch=_mask(),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = MergeSegmentationd()(data)
    assert "masks" not in out and out["case_id"] == "P7"
    for key, channels in (("gtv1", 1), ("secondary", 1), ("structures", len(DEFAULT_STRUCTURES))):
        assert (
            isinstance(out[key], MetaTensor)
            and out[key].shape == (channels, *SHAPE)
            and out[key].dtype == torch.float32
        )
        torch.testing.assert_close(out[key].affine, data["image"].affine)
        assert out[key].meta["filename_or_obj"] == "case/ct.nii.gz"
    torch.testing.assert_close(out["gtv1"].as_tensor(), _mask(primary).as_tensor())
    expected_secondary = _mask(nodule_a, nodule_b).as_tensor()
    torch.testing.assert_close(out["secondary"].as_tensor(), expected_secondary)
    assert int(out["secondary"].sum()) == 2
    structures = out["structures"].as_tensor()
    torch.testing.assert_close(structures[0], _mask((slice(0, 3),))[0].as_tensor())  # Lung-Left
    torch.testing.assert_close(structures[2], _mask((slice(1, 4), slice(1, 4), slice(0, 2)))[0].as_tensor())  # Heart
    assert structures[3].sum() == 4 and structures[4].sum() == 0  # Esophagus: 1 x 1 x 4 voxels; Spinal-Cord missing
    warnings = _ours(caplog)
    assert len(warnings) == 2
    assert "case 'P7'" in warnings[0] and "2 structure(s) not in the synonym table: ['PTV', 'Couch']" in warnings[0]
    assert "case 'P7': no mask for ['Spinal-Cord']" in warnings[1]


def test_merge_unions_spellings_and_writes_zeros_without_secondaries(caplog):
    a, b = (slice(0, 1),), (slice(5, 6),)
    data = _case(**{"GTV-1": _mask(a), "GTV1": _mask(b)}, Heart=_mask(a))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = MergeSegmentationd(structures=["Heart"], drop_masks=False, gtv1_key="gtv", secondary_key="nodes")(data)
    assert "masks" in out and out["structures"].shape == (1, *SHAPE)
    assert int(out["gtv"].sum()) == 2 * 5 * 4 and int(out["nodes"].sum()) == 0
    assert not _ours(caplog)  # nothing unknown, nothing missing


def test_merge_accepts_numpy_masks_and_plain_tensors():
    masks = {"GTV-1": np.ones(SHAPE, np.uint8), "Heart": np.zeros((1, *SHAPE), bool)}
    out = MergeSegmentationd(structures=["Heart"])({"image": torch.zeros(SHAPE), "masks": masks})
    assert type(out["gtv1"]) is torch.Tensor and out["gtv1"].shape == (1, *SHAPE) and out["gtv1"].sum() == 120
    assert out["structures"].sum() == 0


@pytest.mark.parametrize(
    "mask, match",
    [
        (_mask(name="H.nii.gz")[:, :5], r"case 'P7': mask 'Heart' \('H.nii.gz'\) has shape \(1, 5, 5, 4\); expected"),
        (_mask((slice(0, 1),), name="H.nii.gz") * 2, r"'Heart' .*values other than 0 and 1 \(e.g. \[2.0\]\)"),
        (_mask(name="H.nii.gz") * float("nan"), r"mask 'Heart' \('H.nii.gz'\) has 120 NaN voxel"),
        (_mask(name="H.nii.gz", affine=torch.eye(4)), r"mask 'Heart' \('H.nii.gz'\): affine .* differs from the CT"),
        (np.zeros((2, *SHAPE)), r"mask 'Heart' \('masks\['Heart'\]'\) has shape \(2, 6, 5, 4\)"),
    ],
)
def test_merge_rejects_bad_masks(mask, match):
    with pytest.raises(ValueError, match=match):
        MergeSegmentationd()(_case(**{"GTV-1": _mask(), "Heart": mask}))


def test_merge_require_primary():
    with pytest.raises(ValueError, match=r"case 'P7': no mask for the primary tumour 'GTV-1' .*found \['Heart'\]"):
        MergeSegmentationd(require_primary=True)(_case(Heart=_mask()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"structures": ["Lung-Left", "Liver"]}, r"structures \['Liver'\] are not canonical names"),
        ({"structures": ["Heart", "Heart"]}, "structures must be distinct"),
        ({"structures": ["GTV-1"]}, "exclude the primary"),
        ({"synonyms": {"Heart": []}, "structures": ["Heart"]}, r"\['GTV-1'\] are not canonical names"),
    ],
)
def test_merge_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MergeSegmentationd(**kwargs)


def test_merge_rejects_a_bad_ct_or_masks_value():
    with pytest.raises(ValueError, match=r"CT 'case/ct.nii.gz': expected shape \(1, H, W, D\)"):
        MergeSegmentationd()({"image": _ct(torch.zeros(2, *SHAPE)), "masks": {}})
    with pytest.raises(ValueError, match="'masks' must map structure names to masks, found list"):
        MergeSegmentationd()({"image": _ct(), "masks": []})


def test_load_and_merge_phantom_masks_from_disk(phantom_dir, caplog):
    pipeline = Compose(
        [
            SafeLoadImaged(keys="image", reader="NibabelReader", image_only=True, ensure_channel_first=True),
            LoadStructureMasksd("masks"),
            CheckHURanged("image"),
            MergeSegmentationd(),
        ]
    )
    cases = find_ct_cases(phantom_dir)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = pipeline(cases[1])
    assert not _ours(caplog)
    grid = phantom_grid("thorax_ct", 24)
    expected = thorax_ct_phantom(*grid, np.random.default_rng((0, 1)))
    assert out["image"].shape == out["gtv1"].shape == (1, *grid[0]) and out["structures"].shape == (5, *grid[0])
    np.testing.assert_array_equal(out["gtv1"][0].numpy(), expected.masks["GTV-1"])
    np.testing.assert_array_equal(out["secondary"][0].numpy(), expected.masks["GTV-2"] | expected.masks["GTV-3"])
    for channel, name in enumerate(DEFAULT_STRUCTURES):
        np.testing.assert_array_equal(out["structures"][channel].numpy(), expected.masks[name])
    torch.testing.assert_close(out["structures"].affine, out["image"].affine)


def test_load_structure_masks_errors(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match=r"cannot read .*broken.nii.gz"):
        LoadStructureMasksd()({"masks": {"Heart": str(broken)}})
    with pytest.raises(ValueError, match=r"'masks': expected a mapping \{structure name: path\}, found str"):
        LoadStructureMasksd()({"masks": str(broken)})
    with pytest.raises(ValueError, match="mask 'Heart' must be a path or an array, found int"):
        LoadStructureMasksd()({"masks": {"Heart": 3}})
    kept = np.zeros(SHAPE)
    assert LoadStructureMasksd()({"masks": {"Heart": kept}})["masks"]["Heart"] is kept


# ---------------------------------------------------------------------------------------------- body isolation


def test_isolate_body_removes_the_couch_and_keeps_the_body():
    grid = phantom_grid("thorax_ct", 32)
    for index in range(2):
        case = thorax_ct_phantom(*grid, np.random.default_rng((0, index)))
        ct = MetaTensor(torch.as_tensor(case.images["ct"])[None], meta={"filename_or_obj": "ct.nii.gz"})
        out = IsolateBodyd("image", body_key="body")({"image": ct})
        isolated, body = out["image"][0].numpy(), out["body"][0].numpy().astype(bool)
        table = case.tissues == case.tissue_names.index("table")
        assert (isolated[table] == -1000.0).all() and not body[table].any()
        inside = (case.tissues > 0) & ~table & (case.images["ct"] > -500.0)
        assert body[inside].all()
        lungs = (case.masks["Lung-Left"] | case.masks["Lung-Right"]) > 0
        np.testing.assert_array_equal(isolated[lungs], case.images["ct"][lungs])  # holes filled: lungs kept
        np.testing.assert_array_equal(isolated[body], case.images["ct"][body])
        assert (isolated[~body] == -1000.0).all()
        assert out["body"].dtype == torch.uint8 and out["body"].meta["filename_or_obj"] == "ct.nii.gz"


def test_isolate_body_opening_cuts_thin_bridges():
    volume = np.full((20, 12, 6), -1000, dtype=np.int16)
    volume[2:10, 2:10, :] = 40  # body
    volume[13:19, 2:10, :] = 200  # couch block, smaller
    volume[10:13, 5, :] = 200  # a one-voxel-thin support joining them
    joined = IsolateBody(fill_holes="none")(volume)
    assert isinstance(joined, np.ndarray) and joined.dtype == np.int16
    np.testing.assert_array_equal(joined, volume)  # one component: everything kept
    cut = IsolateBody(opening_radius=1, fill_hu=-1024)(volume[None])
    assert cut.shape == (1, 20, 12, 6) and (cut[0, 13:] == -1024).all() and (cut[0, 2:10, 2:10] == 40).all()


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.full((1, 4, 4, 4), -1000.0), {}, r"no voxel above threshold_hu=-500 \(values in \[-1000, -1000\]\)"),
        (np.zeros((2, 4, 4, 4)), {}, r"expected one CT volume \(1, X, Y, Z\) or \(X, Y, Z\), found \(2, 4, 4, 4\)"),
        (np.pad(np.zeros((1, 1, 1)), 2, constant_values=-1000), {"opening_radius": 1}, "the opening .* removed"),
    ],
)
def test_isolate_body_errors(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        IsolateBody(**kwargs)(image)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fill_holes": "2d"}, "fill_holes must be one of"),
        ({"opening_radius": -1}, "opening_radius must be >= 0"),
        ({"slice_axis": 3}, "slice_axis must be a spatial axis"),
    ],
)
def test_isolate_body_settings_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IsolateBody(**kwargs)


def test_isolate_body_can_be_switched_off():
    volume = np.full((8, 8, 4), -1000.0, dtype=np.float32)
    volume[1:4, 1:4] = 40.0
    volume[5:7, 5:7] = 200.0  # a smaller separate object
    out = IsolateBodyd("image", body_key="body", enabled=False)({"image": volume})
    assert out["image"] is volume and "body" not in out
    out = IsolateBodyd("image", body_key="body")({"image": volume})
    assert (out["image"][5:7, 5:7] == -1000.0).all() and (out["image"][1:4, 1:4] == 40.0).all()
    assert out["body"].dtype == torch.uint8 and int(out["body"].sum()) == 3 * 3 * 4


def test_isolate_body_key_needs_one_image_key():
    with pytest.raises(ValueError, match="body_key needs exactly one image key"):
        IsolateBodyd(["ct", "ct2"], body_key="body")


# ---------------------------------------------------------------------------------------------------- HU check


def test_check_hu_range_passes_a_ct_unchanged():
    image = _ct(torch.linspace(-1024, 1500, 120).reshape(1, *SHAPE))
    assert CheckHURange()(image) is image
    data = {"image": image}
    assert CheckHURanged()(data)["image"] is image


@pytest.mark.parametrize(
    "values, kwargs, match",
    [
        (torch.linspace(-1, 1, 120), {}, r"'scan.nii.gz': values in \[-1, 1\] look already normalised"),
        (torch.linspace(-4000, 100, 120), {}, r"'scan.nii.gz': values in \[-4000, 100\] outside the plausible HU"),
        (torch.linspace(-1000, 50000, 120), {}, r"values in \[-1000, 50000\] outside the plausible HU range"),
        (torch.linspace(0, 4095, 120), {}, r"'scan.nii.gz': values in \[0, 4095\] hold no air"),
        (torch.linspace(-1000, 50, 120), {"max_hu": 40.0}, r"range \[-3100, 40\]"),
        (torch.tensor([float("nan")] * 3 + [0.0] * 117), {}, r"'scan.nii.gz': 3 NaN/inf voxel\(s\)"),
        (torch.tensor([float("inf")] + [0.0] * 119), {}, r"1 NaN/inf voxel\(s\)"),
    ],
)
def test_check_hu_range_errors_name_the_file(values, kwargs, match):
    image = _ct(values.reshape(1, *SHAPE), name="scan.nii.gz")
    with pytest.raises(ValueError, match=match):
        CheckHURanged("image", **kwargs)({"image": image})


def test_check_hu_range_thresholds_are_configurable():
    CheckHURange(min_hu=-5000, air_hu=None)(np.linspace(-4000, 100, 10))
    CheckHURange(air_hu=None)(np.linspace(0, 4095, 10))
    CheckHURange(normalised_span=None, air_hu=None)(np.linspace(-1, 1, 10))
    with pytest.raises(ValueError, match="min_hu must be below max_hu"):
        CheckHURange(min_hu=10, max_hu=10)


def test_phantom_files_are_plain_hu(phantom_dir):
    case = find_ct_cases(phantom_dir)[0]
    ct = nib.load(case["image"]).get_fdata(dtype=np.float32)
    CheckHURange()(ct)
    assert ct.min() >= -1024.0


def test_append_mask_channel_puts_the_union_of_the_masks_on_the_image_scale() -> None:
    image = MetaTensor(torch.rand(1, 4, 4, 4) * 2 - 1, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    gtv1 = torch.zeros(1, 4, 4, 4)
    gtv1[0, 0, 0, 0] = 1
    secondary = torch.zeros(4, 4, 4)  # no channel axis: read as one mask too
    secondary[3, 3, 3] = 1
    out = AppendMaskChanneld("image", mask_keys=["gtv1", "secondary"], value_range=(-1.0, 1.0))(
        {"image": image, "gtv1": gtv1, "secondary": secondary}
    )
    assert out["image"].shape == (2, 4, 4, 4) and torch.equal(out["image"][0], image[0])
    expected = torch.full((4, 4, 4), -1.0)
    expected[0, 0, 0] = expected[3, 3, 3] = 1.0
    assert torch.equal(out["image"][1].as_tensor(), expected)
    assert torch.equal(out["image"].affine, image.affine)  # the image's metadata kept
    scaled = AppendMaskChanneld("image", "gtv1", value_range=(-1000.0, 1000.0))({"image": image, "gtv1": gtv1})
    assert float(scaled["image"][1].max()) == 1000.0 and float(scaled["image"][1].min()) == -1000.0
    untouched = AppendMaskChanneld("image", "gtv1", enabled=False)({"image": image, "gtv1": gtv1})
    assert untouched["image"] is image


def test_read_mask_channel_inverts_append_mask_channel_on_either_scale() -> None:
    mask = (torch.rand(1, 4, 4, 4) > 0.7).float()
    for value_range in ((-1.0, 1.0), (-1000.0, 1000.0)):
        append = AppendMaskChanneld("image", "gtv1", value_range=value_range)
        appended = append({"image": torch.zeros(1, 4, 4, 4), "gtv1": mask})
        assert torch.equal(read_mask_channel(appended["image"][1:], value_range), mask)
    decoded = torch.tensor([-0.9, -0.01, 0.01, 0.8])  # a decoder's values: split at the range's midpoint
    assert read_mask_channel(decoded, (-1.0, 1.0)).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert read_mask_channel(torch.tensor([0, 1, 2]), (0.0, 2.0)).dtype == torch.float32


def test_append_mask_channel_errors_name_the_mask() -> None:
    image = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="mask key 'secondary' is missing; the data has \\['gtv1', 'image'\\]"):
        AppendMaskChanneld("image")({"image": image, "gtv1": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(
        ValueError, match="mask 'gtv1' .* spatial shape \\(4, 4, 3\\); expected the image's \\(4, 4, 4\\)"
    ):
        AppendMaskChanneld("image", "gtv1")({"image": image, "gtv1": torch.zeros(1, 4, 4, 3)})
    with pytest.raises(ValueError, match="mask 'gtv1' .* values other than 0 and 1"):
        AppendMaskChanneld("image", "gtv1")({"image": image, "gtv1": torch.full((1, 4, 4, 4), 0.5)})
    with pytest.raises(ValueError, match="at least one mask"):
        AppendMaskChanneld("image", mask_keys=[])
    with pytest.raises(ValueError, match="high > low"):
        AppendMaskChanneld("image", value_range=(1.0, -1.0))
