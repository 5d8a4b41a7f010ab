"""Tests of common.data.phantoms: grids, affines, anatomy, contrasts, determinism and the atomic dataset writer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from common.data import phantoms
from common.data.phantoms.head_neck import HECKTOR_MODALITIES, PETCT_MODALITIES, head_neck_petct_phantom
from common.data.phantoms.kinds import (
    PHANTOM_KINDS,
    get_phantom_kind,
    phantom_affine,
    phantom_grid,
    write_phantom_dataset,
)
from common.data.phantoms.mri import (
    BRATS_MODALITIES,
    brats_mri_phantom,
    whole_head_mri_phantom,
)
from common.data.phantoms.thorax import THORAX_STRUCTURES, thorax_ct_phantom


def _rng(index: int = 0) -> np.random.Generator:
    return np.random.default_rng((0, index))


def _tissue_means(case: phantoms.PhantomCase, modality: str) -> dict[str, float]:
    image = case.images[modality]
    return {name: float(image[case.tissues == i].mean()) for i, name in enumerate(case.tissue_names)}


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of a 3D mask with a 6-neighbour outside it (beyond the array edge counts as inside)."""
    padded = np.pad(mask, 1, mode="edge")
    interior = mask.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~interior


def _min_distance_mm(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Smallest distance (mm) between the voxel centres of two disjoint 3D masks (measured to ``b``'s boundary)."""
    points_a, points_b = np.argwhere(a) * spacing, np.argwhere(_boundary(b)) * spacing
    return min(
        float(np.sqrt(((chunk[:, None] - points_b[None]) ** 2).sum(-1)).min())
        for chunk in np.array_split(points_a, max(1, len(points_a) // 256))
    )


@pytest.mark.parametrize(
    "kind, size, shape, spacing",
    [
        ("whole_head_mri", 32, (32, 32, 32), (6.0, 6.0, 6.0)),
        ("semantic_mri", 64, (64, 64, 64), (3.0, 3.0, 3.0)),
        ("brats_mri", 64, (64, 64, 48), (3.0, 3.0, 3.0)),
        ("semantic_mri_brats", 32, (32, 32, 24), (6.0, 6.0, 6.0)),
    ],
)
def test_phantom_grid_default_field_of_view(kind, size, shape, spacing):
    assert phantom_grid(kind, size) == (shape, spacing)


def test_phantom_grid_explicit_shape_and_spacing():
    assert phantom_grid("whole_head_mri", shape=(40, 48, 36)) == ((40, 48, 36), (4.8, 4.0, 192.0 / 36))
    assert phantom_grid("brats_mri", shape=(20, 20, 16), spacing=(1, 2, 3)) == ((20, 20, 16), (1.0, 2.0, 3.0))


def test_phantom_grid_rejects_small_size():
    with pytest.raises(ValueError, match="size must be >= 8"):
        phantom_grid("whole_head_mri", size=4)


def test_phantom_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"shape must be 3 voxel counts .* got \(32, 32\)"):
        phantom_grid("whole_head_mri", shape=(32, 32))


def test_phantom_grid_rejects_bad_spacing():
    with pytest.raises(ValueError, match=r"spacing must be 3 positive .* got \(1.0, 1.0, 0.0\)"):
        phantom_grid("whole_head_mri", shape=(16, 16, 16), spacing=(1.0, 1.0, 0.0))


def test_get_phantom_kind_resolves_aliases():
    assert get_phantom_kind("semantic_mri") is PHANTOM_KINDS["whole_head_mri"]
    assert get_phantom_kind("semantic_mri_brats") is PHANTOM_KINDS["brats_mri"]


def test_get_phantom_kind_unknown_lists_known_kinds():
    with pytest.raises(ValueError, match=r"kind must be one of \['brats_mri', .*'whole_head_mri'\], got 'lung_ct'"):
        get_phantom_kind("lung_ct")


def test_phantom_affine_is_ras_diagonal_and_centred():
    affine = phantom_affine((32, 40, 24), (6.0, 4.8, 6.0))
    np.testing.assert_allclose(np.diag(affine), [6.0, 4.8, 6.0, 1.0])
    np.testing.assert_allclose(affine @ [15.5, 19.5, 11.5, 1.0], [0.0, 0.0, 0.0, 1.0])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


@pytest.mark.parametrize("shape, spacing", [((32, 32, 32), (6.0, 6.0, 6.0)), ((40, 48, 36), (4.8, 4.0, 5.3))])
def test_whole_head_case_shapes_dtypes_labels(shape, spacing):
    case = whole_head_mri_phantom(shape, spacing, _rng())
    image, label = case.images["t1c"], case.label
    assert image.shape == label.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    assert image.min() >= 0.0 and image.max() < 1.25
    assert image[label == 0].mean() < 0.03  # background near 0 (Rician noise floor)


def test_brats_case_shapes_dtypes_labels_and_zero_background():
    case = brats_mri_phantom((32, 32, 24), (6.0, 6.0, 6.0), _rng())
    images, seg = case.images, case.label
    assert list(images) == list(BRATS_MODALITIES)
    assert seg.shape == (32, 32, 24) and seg.dtype == np.uint8
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    brain = images["t1"] > 0
    for image in images.values():
        assert image.shape == seg.shape and image.dtype == np.float32
        assert np.array_equal(image > 0, brain)  # one brain mask, exactly 0 (no noise) outside it
    assert not brain[0].any() and not brain[:, :, -1].any()
    assert brain[seg > 0].all()


@pytest.mark.parametrize("generate", [whole_head_mri_phantom, brats_mri_phantom])
def test_same_seed_same_case_different_seed_different_case(generate):
    first, again, other = (generate((24, 24, 24), (8.0, 8.0, 6.0), _rng(i)) for i in (0, 0, 1))
    assert np.array_equal(first.label, again.label) and np.array_equal(first.tissues, again.tissues)
    for modality in first.images:
        assert np.array_equal(first.images[modality], again.images[modality])
        assert not np.array_equal(first.images[modality], other.images[modality])
    assert not np.array_equal(first.label, other.label)


@pytest.mark.parametrize("kind, tumour_labels", [("whole_head_mri", (2,)), ("brats_mri", (1, 4))])
def test_seeded_golden_label_counts(kind, tumour_labels):
    """Case 0 of seed 0 at 32 voxels: guards against unnoticed changes of the anatomy (update when intended).

    1 % slack: float32 ``sin``/``sqrt`` may differ in the last bit between CPUs, which can flip a boundary voxel.
    """
    expected = {"whole_head_mri": (8969, 210), "brats_mri": (826, 278)}[kind]
    shape, spacing = phantom_grid(kind, 32)
    label = PHANTOM_KINDS[kind].generate(shape, spacing, _rng()).label
    counts = (int((label > 0).sum()), int(np.isin(label, tumour_labels).sum()))
    assert counts == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("size", [32, 48])
def test_whole_head_tumour_stays_inside_the_brain(size):
    shape, spacing = phantom_grid("whole_head_mri", size)
    for index in range(4):
        case = whole_head_mri_phantom(shape, spacing, _rng(index))
        tumour = case.label == 2
        skull = np.isin(case.tissues, [case.tissue_names.index("skull"), case.tissue_names.index("diploe")])
        assert _min_distance_mm(tumour, case.label == 0, spacing) >= 20.0
        assert _min_distance_mm(tumour, skull, spacing) >= 8.0
        assert not tumour[[0, -1]].any() and not tumour[:, [0, -1]].any() and not tumour[:, :, [0, -1]].any()


def test_brats_tumour_stays_inside_the_brain():
    shape, spacing = phantom_grid("brats_mri", 32)
    for index in range(4):
        case = brats_mri_phantom(shape, spacing, _rng(index))
        core = np.isin(case.label, (1, 4))
        assert _min_distance_mm(core, case.tissues == 0, spacing) >= 10.0
        assert (case.label[case.tissues == 0] == 0).all()


def test_anatomy_has_a_physical_size():
    """The same case on a coarse and a fine grid: the same head volume in mm^3."""
    volumes = []
    for size in (32, 64):
        shape, spacing = phantom_grid("whole_head_mri", size)
        label = whole_head_mri_phantom(shape, spacing, _rng(3)).label
        volumes.append([(label > 0).sum() * np.prod(spacing), (label == 2).sum() * np.prod(spacing)])
    np.testing.assert_allclose(volumes[0], volumes[1], rtol=0.08)
    assert 1.5e6 < volumes[1][0] < 3.0e6  # a head of about 150 x 175 x 160 mm
    assert 4 / 3 * np.pi * 14**3 < volumes[1][1] < 4 / 3 * np.pi * 28**3  # tumour diameter about 30-55 mm


@pytest.mark.parametrize("index", [0, 1])
def test_whole_head_t1c_contrasts(index):
    shape, spacing = phantom_grid("whole_head_mri", 64)
    mean = _tissue_means(whole_head_mri_phantom(shape, spacing, _rng(index)), "t1c")
    assert mean["enhancing"] > 1.5 * mean["scalp"]  # rim clearly the brightest tissue
    assert mean["scalp"] > mean["white_matter"] > mean["grey_matter"] > mean["csf"]
    assert mean["white_matter"] > mean["oedema"] and mean["grey_matter"] > mean["necrosis"]
    assert max(mean["skull"], mean["ventricles"]) < mean["grey_matter"]
    assert mean["background"] < 0.03


def test_brats_contrasts_per_modality():
    shape, spacing = phantom_grid("brats_mri", 64)
    case = brats_mri_phantom(shape, spacing, _rng(2))
    t1, t1ce, t2, flair = (_tissue_means(case, m) for m in BRATS_MODALITIES)
    assert t1["white_matter"] > t1["grey_matter"] > t1["csf"]
    assert t1["white_matter"] > max(t1["enhancing"], t1["oedema"], t1["necrosis"])
    assert t1ce["enhancing"] > 1.3 * max(value for name, value in t1ce.items() if name != "enhancing")
    assert t2["csf"] > t2["oedema"] > t2["grey_matter"] > t2["white_matter"]
    assert t2["ventricles"] > t2["oedema"]
    assert flair["oedema"] == max(flair.values())
    assert flair["csf"] < min(flair["grey_matter"], flair["white_matter"])


def test_write_whole_head_dataset(tmp_path):
    out = write_phantom_dataset("semantic_mri", tmp_path / "heads", n=2, size=16, seed=3)
    assert out == tmp_path / "heads"
    description = json.loads((out / "dataset.json").read_text())
    assert description["name"] == "whole_head_mri" and description["numTraining"] == 2
    assert description["modality"] == {"0": "t1c"}
    assert description["labels"] == {"0": "background", "1": "head", "2": "tumour"}
    assert description["training"][1] == {"image": "imagesTr/head_001.nii.gz", "label": "labelsTr/head_001.nii.gz"}
    for entry in description["training"]:
        image, label = nib.load(out / entry["image"]), nib.load(out / entry["label"])
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape == (16, 16, 16)
        np.testing.assert_allclose(image.affine, phantom_affine((16, 16, 16), (12.0, 12.0, 12.0)))
        assert set(np.unique(np.asanyarray(label.dataobj))) <= {0, 1, 2}
    expected = whole_head_mri_phantom((16, 16, 16), (12.0, 12.0, 12.0), np.random.default_rng((3, 1))).images["t1c"]
    np.testing.assert_array_equal(nib.load(out / "imagesTr/head_001.nii.gz").get_fdata(dtype=np.float32), expected)


def test_write_brats_dataset(tmp_path):
    out = write_phantom_dataset("brats_mri", tmp_path / "brats", n=2, shape=(16, 16, 12), spacing=(12, 12, 12))
    description = json.loads((out / "dataset.json").read_text())
    assert description["modality"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}
    assert set(description["labels"]) == {"0", "1", "2", "4"}
    first = description["training"][0]
    case = "BraTS_phantom_00000"
    assert first["image"] == [f"{case}/{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    assert first["label"] == f"{case}/{case}_seg.nii.gz"
    for entry in description["training"]:
        for path in [*entry["image"], entry["label"]]:
            loaded = nib.load(out / path)
            assert loaded.shape == (16, 16, 12)
            np.testing.assert_allclose(loaded.affine[:3, 3], [-90.0, -90.0, -66.0])


def test_cases_do_not_depend_on_n(tmp_path):
    one = write_phantom_dataset("whole_head_mri", tmp_path / "one", n=1, size=16)
    two = write_phantom_dataset("whole_head_mri", tmp_path / "two", n=2, size=16)
    for path in ("imagesTr/head_000.nii.gz", "labelsTr/head_000.nii.gz"):
        np.testing.assert_array_equal(nib.load(one / path).get_fdata(), nib.load(two / path).get_fdata())


def test_write_into_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = write_phantom_dataset("whole_head_mri", tmp_path / "empty", n=1, size=16)
    assert (out / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_existing_non_empty_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="data"):
        write_phantom_dataset("whole_head_mri", out, n=1, size=16)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def fail_on_third_file(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(phantoms.kinds, "atomic_write_nifti", fail_on_third_file)
    with pytest.raises(OSError, match="disk full"):
        write_phantom_dataset("whole_head_mri", tmp_path / "data", n=2, size=16)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_no_cases(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1 case, got 0"):
        write_phantom_dataset("whole_head_mri", tmp_path / "data", n=0)


# --------------------------------------------------------------------------------------------------------------------
# head-and-neck PET-CT phantom
# --------------------------------------------------------------------------------------------------------------------


def _pet_on_ct_grid(case: phantoms.PhantomCase, ct_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PET SUV at each CT voxel centre, nearest PET voxel through the affines, and where the PET covers it (bool)."""
    shape = case.label.shape
    ct_voxels = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = ct_voxels @ ct_affine[:3, :3].T + ct_affine[:3, 3]
    pet_affine, pet = case.affines["pet"], case.images["pet"]
    pet_voxels = np.rint((world - pet_affine[:3, 3]) @ np.linalg.inv(pet_affine[:3, :3]).T).astype(int)
    covered = np.all((pet_voxels >= 0) & (pet_voxels < pet.shape), axis=1)
    values = np.zeros(len(world), dtype=np.float32)
    values[covered] = pet[tuple(pet_voxels[covered].T)]
    return values.reshape(shape), covered.reshape(shape)


def _tissue(case: phantoms.PhantomCase, *names: str) -> np.ndarray:
    return np.isin(case.tissues, [case.tissue_names.index(name) for name in names])


@pytest.fixture(scope="module")
def petct_case() -> tuple[tuple, phantoms.PhantomCase]:
    """Case 0 of seed 0 on the default 64-voxel grid, with that grid (shape, spacing)."""
    grid = phantom_grid("head_neck_petct", 64)
    return grid, head_neck_petct_phantom(*grid, _rng())


def test_head_neck_petct_is_registered_with_its_bundle_alias():
    kind = get_phantom_kind("paired_petct")
    assert kind is PHANTOM_KINDS["head_neck_petct"] and kind.generate is head_neck_petct_phantom
    assert kind.modalities == PETCT_MODALITIES == ("ct", "pet") and kind.modality_names == HECKTOR_MODALITIES
    assert kind.labels == {"0": "background", "1": "GTV (primary tumour)"}
    assert phantom_grid("paired_petct", 64) == ((64, 64, 51), (3.125, 3.125, 160.0 / 51))


@pytest.mark.parametrize(
    "shape, spacing, match", [((32, 32), (6.0,) * 3, "shape"), ((32,) * 3, (6.0, 0.0, 6.0), "spacing")]
)
def test_head_neck_petct_rejects_a_bad_grid(shape, spacing, match):
    with pytest.raises(ValueError, match=match):
        head_neck_petct_phantom(shape, spacing, _rng())


def test_head_neck_petct_shapes_dtypes_and_labels(petct_case):
    (shape, _), case = petct_case
    assert list(case.images) == ["ct", "pet"] and list(case.affines) == ["pet"]  # CT shares the label grid
    ct, pet = case.images["ct"], case.images["pet"]
    assert ct.shape == case.label.shape == case.tissues.shape == shape
    assert ct.dtype == pet.dtype == np.float32 and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) == {0, 1}
    assert pet.min() >= 0.0 and all(p < c for p, c in zip(pet.shape, shape))


def test_existing_kinds_keep_one_grid():
    assert whole_head_mri_phantom((16, 16, 16), (12.0, 12.0, 12.0), _rng()).affines == {}


def test_head_neck_pet_grid_is_coarser_shifted_and_overlaps_the_ct(petct_case):
    (shape, spacing), case = petct_case
    pet_affine, pet_shape = case.affines["pet"], case.images["pet"].shape
    np.testing.assert_allclose(np.diag(pet_affine)[:3], np.array(spacing) * (2.0, 2.0, 1.5))
    assert nib.aff2axcodes(pet_affine) == ("R", "A", "S")
    offset = pet_affine[:3, 3] - phantom_affine(pet_shape, np.diag(pet_affine)[:3])[:3, 3]  # PET centre in world
    assert 0.0 < np.abs(offset).max() <= 4.0
    corners = np.array([[-0.5, -0.5, -0.5, 1.0], [*(n - 0.5 for n in pet_shape), 1.0]])
    pet_box = (corners @ pet_affine.T)[:, :3]
    ct_box = np.array([[-0.5 * n * s for n, s in zip(shape, spacing)], [0.5 * n * s for n, s in zip(shape, spacing)]])
    overlap = np.prod(np.minimum(pet_box[1], ct_box[1]) - np.maximum(pet_box[0], ct_box[0]))
    assert overlap > 0.9 * np.prod(pet_box[1] - pet_box[0])  # a slightly smaller field of view over the same anatomy
    assert np.prod(pet_box[1] - pet_box[0]) < np.prod(ct_box[1] - ct_box[0])


def test_head_neck_ct_hounsfield_units(petct_case):
    _, case = petct_case
    ct = case.images["ct"]
    median = {name: float(np.median(ct[_tissue(case, name)])) for name in case.tissue_names}
    assert median["background"] == pytest.approx(-1000.0, abs=5.0) and ct.min() >= -1024.0
    assert median["airway"] < -900.0
    assert -130.0 < median["fat"] < -70.0 and 30.0 < median["muscle"] < 50.0 and 25.0 < median["brain"] < 45.0
    assert min(median["vertebra"], median["mandible"], median["skull"]) > 500.0 and ct.max() < 1300.0
    tumour = case.label == 1
    assert abs(float(ct[tumour].mean()) - median["muscle"]) < 20.0  # barely visible on CT
    assert (ct[tumour] > -500.0).all()


def test_head_neck_tumour_is_the_hot_spot_on_pet(petct_case):
    (shape, spacing), case = petct_case
    pet, covered = _pet_on_ct_grid(case, phantom_affine(shape, spacing))
    tumour = (case.label == 1) & covered
    assert tumour.sum() == (case.label == 1).sum()  # the PET covers the whole tumour

    def mean_suv(mask: np.ndarray) -> float:
        return float(pet[mask & covered & (case.label == 0)].mean())

    soft_tissue = mean_suv(_tissue(case, "muscle"))
    assert 0.7 < soft_tissue < 1.5
    assert float(pet[tumour].mean()) > 4.0 * soft_tissue
    assert mean_suv(_tissue(case, "brain")) > 4.0 * soft_tissue
    assert mean_suv(_tissue(case, "background")) < 0.05
    for organ in ("parotid", "submandibular", "vertebra", "mandible", "fat"):
        assert float(pet[tumour].mean()) > 1.5 * mean_suv(_tissue(case, organ)), organ


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_head_neck_tumour_lies_deep_in_the_neck(index):
    shape, spacing = phantom_grid("head_neck_petct", 48)
    case = head_neck_petct_phantom(shape, spacing, _rng(index))
    tumour = case.label == 1
    assert (case.images["ct"][tumour] > -500.0).all()
    assert _min_distance_mm(tumour, case.tissues == 0, spacing) >= 5.0
    bone = _tissue(case, "vertebra", "mandible", "skull")
    assert not (tumour & bone).any() and not (tumour & _tissue(case, "brain", "csf")).any()
    diameter = (6.0 / np.pi * tumour.sum() * np.prod(spacing)) ** (1.0 / 3.0)
    assert 12.0 < diameter < 40.0


def test_head_neck_same_seed_same_case_different_seed_different_case():
    grid = phantom_grid("head_neck_petct", 24)
    first, again, other = (head_neck_petct_phantom(*grid, _rng(i)) for i in (0, 0, 1))
    for modality in PETCT_MODALITIES:
        assert np.array_equal(first.images[modality], again.images[modality])
        assert not np.array_equal(first.images[modality], other.images[modality])
    assert np.array_equal(first.label, again.label) and not np.array_equal(first.label, other.label)
    np.testing.assert_array_equal(first.affines["pet"], again.affines["pet"])
    assert not np.array_equal(first.affines["pet"], other.affines["pet"])


def test_head_neck_seeded_golden_counts(petct_case):
    """Body and tumour voxels of case 0, seed 0, 64 voxels: guards the anatomy (update when intended).

    1 % or 2 voxels of slack: float32 ``sin``/``sqrt`` may differ in the last bit between CPUs.
    """
    _, case = petct_case
    counts = (int((case.tissues > 0).sum()), int(case.label.sum()))
    assert counts == pytest.approx((73357, 125), rel=0.01, abs=2)


def test_write_head_neck_petct_dataset(tmp_path):
    out = write_phantom_dataset("paired_petct", tmp_path / "petct", n=2, size=32, seed=1)
    description = json.loads((out / "dataset.json").read_text())
    assert description["name"] == "head_neck_petct" and description["modality"] == {"0": "CT", "1": "PT"}
    assert description["labels"] == {"0": "background", "1": "GTV (primary tumour)"}
    assert description["training"][1] == {
        "image": ["imagesTr/HN_phantom_001__CT.nii.gz", "imagesTr/HN_phantom_001__PT.nii.gz"],
        "label": "labelsTr/HN_phantom_001.nii.gz",
    }
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"HN_phantom_00{i}__{m}.nii.gz" for i in (0, 1) for m in ("CT", "PT")
    ]
    grid = phantom_grid("head_neck_petct", 32)
    for index, entry in enumerate(description["training"]):
        expected = head_neck_petct_phantom(*grid, np.random.default_rng((1, index)))
        ct, pt, label = (nib.load(out / path) for path in [*entry["image"], entry["label"]])
        assert ct.shape == label.shape == grid[0] and pt.shape == expected.images["pet"].shape
        np.testing.assert_allclose(ct.affine, phantom_affine(*grid))
        np.testing.assert_allclose(label.affine, phantom_affine(*grid))
        np.testing.assert_allclose(pt.affine, expected.affines["pet"], atol=1e-4)
        np.testing.assert_array_equal(pt.get_fdata(dtype=np.float32), expected.images["pet"])
        assert ct.get_data_dtype() == pt.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(label.dataobj))) <= {0, 1}


# --------------------------------------------------------------------------------------------------------------------
# thorax CT phantom
# --------------------------------------------------------------------------------------------------------------------


def _dilate(mask: np.ndarray) -> np.ndarray:
    """6-neighbour dilation of a 3D mask by one voxel (nothing wraps around the edges)."""
    padded = np.pad(mask, 1)
    grown = padded.copy()
    for axis in range(3):
        for step in (-1, 1):
            grown |= np.roll(padded, step, axis=axis)
    return grown[1:-1, 1:-1, 1:-1]


@pytest.fixture(scope="module")
def thorax_case() -> tuple[tuple, phantoms.PhantomCase]:
    """Case 1 of seed 0 (a primary tumour and two nodules) on the default 64-voxel grid, with that grid."""
    grid = phantom_grid("thorax_ct", 64)
    return grid, thorax_ct_phantom(*grid, _rng(1))


def test_thorax_ct_is_registered_with_its_bundle_alias():
    kind = get_phantom_kind("latent_ct")
    assert kind is PHANTOM_KINDS["thorax_ct"] and kind.generate is thorax_ct_phantom
    assert kind.modalities == ("ct",) and kind.modality_names == ("CT",) and kind.structures == THORAX_STRUCTURES
    assert phantom_grid("latent_ct", 64) == ((64, 64, 55), (350.0 / 64, 350.0 / 64, 300.0 / 55))


def test_phantom_kind_needs_a_file_layout():
    with pytest.raises(ValueError, match="phantom kind 'x' needs case_files or write_case"):
        phantoms.PhantomKind("x", "", thorax_ct_phantom, (1.0, 1.0, 1.0), ("ct",), {}, "x_{:03d}")


@pytest.mark.parametrize(
    "shape, spacing, match", [((32, 32), (6.0,) * 3, "shape"), ((32,) * 3, (6.0, -1.0, 6.0), "spacing")]
)
def test_thorax_ct_rejects_a_bad_grid(shape, spacing, match):
    with pytest.raises(ValueError, match=match):
        thorax_ct_phantom(shape, spacing, _rng())


def test_thorax_structures_are_binary_masks_on_the_ct_grid(thorax_case):
    (shape, _), case = thorax_case
    assert list(case.images) == ["ct"] and case.affines == {}
    assert case.images["ct"].shape == shape and case.images["ct"].dtype == np.float32
    assert list(case.masks) == list(THORAX_STRUCTURES)  # this case has GTV-2 and GTV-3
    for name, mask in case.masks.items():
        assert mask.shape == shape and mask.dtype == np.uint8, name
        assert set(np.unique(mask)) == {0, 1}, name
    assert set(np.unique(case.label)) == {0, 1, 2}
    np.testing.assert_array_equal(case.label == 1, case.masks["GTV-1"] > 0)
    assert not (case.masks["Lung-Left"] & case.masks["Lung-Right"]).any()
    assert not (case.masks["Heart"] & (case.masks["Lung-Left"] | case.masks["Lung-Right"])).any()
    lungs = [np.argwhere(case.masks[side])[:, 0].mean() for side in ("Lung-Right", "Lung-Left")]
    heart_x = np.argwhere(case.masks["Heart"])[:, 0].mean()
    assert lungs[0] > (shape[0] - 1) / 2 > lungs[1] and heart_x < (shape[0] - 1) / 2  # RAS: +x is the right


def test_thorax_ct_hounsfield_units(thorax_case):
    _, case = thorax_case
    ct = case.images["ct"]
    median = {name: float(np.median(ct[case.tissues == i])) for i, name in enumerate(case.tissue_names)}
    assert median["background"] == pytest.approx(-1000.0, abs=5.0) and ct.min() >= -1024.0
    assert -900.0 < median["lung"] < -780.0 and median["airway"] < -800.0
    assert -130.0 < median["fat"] < -70.0 and -110.0 < median["mediastinum"] < -60.0
    assert 30.0 < median["muscle"] < 55.0 and 30.0 < median["heart"] < 55.0 and 15.0 < median["spinal_cord"] < 40.0
    assert median["vertebra"] > 350.0 and median["rib"] > 350.0 and ct.max() < 1000.0
    table = ct[case.tissues == case.tissue_names.index("table")]
    assert 100.0 <= np.percentile(table, 95) < 350.0
    core = (case.masks["GTV-1"] > 0) & ~_dilate(case.masks["GTV-1"] == 0)  # away from partial volume
    assert 15.0 < float(ct[core].mean()) < 65.0
    air = ct[:, -4:, :]  # in front of the patient
    assert 13.0 < float(air.std()) < 22.0  # CT noise


@pytest.mark.parametrize("index", [0, 2, 3, 4])
def test_thorax_primary_tumour_lies_inside_one_lung(index):
    shape, spacing = phantom_grid("thorax_ct", 48)
    case = thorax_ct_phantom(shape, spacing, _rng(index))
    tumour = case.masks["GTV-1"] > 0
    inside = [side for side in ("Lung-Left", "Lung-Right") if case.masks[side][tumour].all()]
    assert len(inside) == 1
    other = "Lung-Right" if inside == ["Lung-Left"] else "Lung-Left"
    assert not case.masks[other][tumour].any()
    shell = _dilate(tumour) & ~tumour  # the voxels around it are lung parenchyma
    assert np.isin(case.tissues[shell], [case.tissue_names.index("lung"), case.tissue_names.index("nodule")]).all()
    for organ in ("Heart", "Esophagus", "Spinal-Cord"):
        assert not case.masks[organ][tumour].any(), organ
    diameter = (6.0 / np.pi * tumour.sum() * np.prod(spacing)) ** (1.0 / 3.0)
    assert 8.0 < diameter < 55.0


def test_thorax_nodules_in_some_cases_apart_from_the_primary():
    grid = phantom_grid("thorax_ct", 24)
    cases = [thorax_ct_phantom(*grid, _rng(index)) for index in range(10)]
    with_nodules = [case for case in cases if "GTV-2" in case.masks]
    assert 0 < len(with_nodules) < len(cases)
    for case in with_nodules:
        names = [name for name in case.masks if name.startswith("GTV-")]
        assert names == [f"GTV-{i}" for i in range(1, len(names) + 1)] and len(names) <= 3
        lungs = (case.masks["Lung-Left"] | case.masks["Lung-Right"]) > 0
        for name in names[1:]:
            nodule = case.masks[name] > 0
            assert nodule.any() and lungs[nodule].all() and not (nodule & (case.masks["GTV-1"] > 0)).any()
            assert (case.label[nodule] == 2).all()


@pytest.mark.parametrize("size", [24, 32])
def test_thorax_table_lies_below_the_body_across_an_air_gap(size):
    """Along y (posterior to anterior) every column meets the couch, then air below -500 HU, then the body."""
    heights = []
    for index in range(3):
        case = thorax_ct_phantom(*phantom_grid("thorax_ct", size), _rng(index))
        table = case.tissues == case.tissue_names.index("table")
        body = (case.tissues > 0) & ~table
        dense = case.images["ct"] > -500.0
        rows = np.arange(table.shape[1])[None, :, None]
        table_top = np.where(table & dense, rows, -1).max(axis=1)
        body_bottom = np.where(body & dense, rows, table.shape[1]).min(axis=1)
        assert table_top.max() >= 0 and (body_bottom - table_top >= 2).all()  # at least one air voxel between
        assert not table[:, rows.ravel() > np.median(np.argwhere(body)[:, 1])].any()  # nothing above mid-body
        heights.append(np.argwhere(table & dense)[:, 1].max())
    assert len(set(heights)) > 1  # the couch height differs between cases


def test_thorax_same_seed_same_case_different_seed_different_case():
    grid = phantom_grid("thorax_ct", 24)
    first, again, other = (thorax_ct_phantom(*grid, _rng(i)) for i in (0, 0, 1))
    assert np.array_equal(first.images["ct"], again.images["ct"])
    assert first.masks.keys() == again.masks.keys()
    assert all(np.array_equal(first.masks[name], again.masks[name]) for name in first.masks)
    assert not np.array_equal(first.images["ct"], other.images["ct"])
    assert not np.array_equal(first.masks["Lung-Left"], other.masks["Lung-Left"])


def test_thorax_seeded_golden_counts(thorax_case):
    """Body, lung and GTV-1 voxels of case 1, seed 0, 64 voxels: guards the anatomy (update when intended).

    1 % or 2 voxels of slack: float32 ``sin``/``sqrt`` may differ in the last bit between CPUs.
    """
    _, case = thorax_case
    table = case.tissue_names.index("table")
    lungs = case.masks["Lung-Left"] | case.masks["Lung-Right"]
    counts = (
        int(((case.tissues > 0) & (case.tissues != table)).sum()),
        int(lungs.sum()),
        int(case.masks["GTV-1"].sum()),
    )
    assert counts == pytest.approx((96075, 20873, 106), rel=0.01, abs=2)


def test_write_thorax_ct_dataset(tmp_path):
    out = write_phantom_dataset("latent_ct", tmp_path / "lung", n=2, size=24, seed=1)
    description = json.loads((out / "dataset.json").read_text())
    assert description["name"] == "thorax_ct" and description["modality"] == {"0": "CT"}
    assert description["structures"] == list(THORAX_STRUCTURES) and "labels" not in description
    assert description["numTraining"] == 2
    grid = phantom_grid("thorax_ct", 24)
    for index, entry in enumerate(description["training"]):
        case_id = f"LUNG_phantom_{index:03d}"
        expected = thorax_ct_phantom(*grid, np.random.default_rng((1, index)))
        assert entry == {
            "case_id": case_id,
            "image": f"{case_id}/ct.nii.gz",
            "masks": {name: f"{case_id}/masks/{name}.nii.gz" for name in expected.masks},
        }
        assert sorted(p.name for p in (out / case_id).iterdir()) == ["ct.nii.gz", "masks"]
        assert sorted(p.name for p in (out / case_id / "masks").iterdir()) == sorted(
            f"{name}.nii.gz" for name in expected.masks
        )
        ct = nib.load(out / entry["image"])
        assert ct.shape == grid[0] and ct.get_data_dtype() == np.float32
        np.testing.assert_allclose(ct.affine, phantom_affine(*grid))
        np.testing.assert_array_equal(ct.get_fdata(dtype=np.float32), expected.images["ct"])
        for name, path in entry["masks"].items():
            mask = nib.load(out / path)
            assert mask.get_data_dtype() == np.uint8 and mask.shape == grid[0]
            np.testing.assert_allclose(mask.affine, phantom_affine(*grid))
            np.testing.assert_array_equal(np.asanyarray(mask.dataobj), expected.masks[name])


def test_write_phantom_dataset_first_continues_the_same_population(tmp_path):
    """Cases numbered from ``first`` are the cases a larger dataset would hold there (a held-out test set)."""
    grid = {"shape": (16, 16, 16), "spacing": (12.0, 12.0, 12.0)}
    whole = write_phantom_dataset("whole_head_mri", tmp_path / "whole", n=3, **grid)
    tail = write_phantom_dataset("whole_head_mri", tmp_path / "tail", n=1, first=2, **grid)
    assert [e["label"] for e in json.loads((tail / "dataset.json").read_text())["training"]] == [
        "labelsTr/head_002.nii.gz"
    ]
    for name in ("imagesTr/head_002.nii.gz", "labelsTr/head_002.nii.gz"):
        np.testing.assert_array_equal(nib.load(whole / name).get_fdata(), nib.load(tail / name).get_fdata())
    with pytest.raises(ValueError, match="first must be a case index >= 0"):
        write_phantom_dataset("whole_head_mri", tmp_path / "bad", n=1, first=-1, **grid)
