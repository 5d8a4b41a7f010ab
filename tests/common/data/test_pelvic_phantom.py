"""Tests of the axial pelvic CT slice phantom (common/data/phantoms/pelvis.py) and its ``pelvic_ct`` slice kind."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from common.data.phantoms.pelvis import PELVIC_LEVELS, pelvic_ct_slice
from common.data.phantoms.slices import write_slice_phantoms

# Where the median CT number of each tissue's pure pixels (noise included) must lie: typical clinical values, written
# here independently of the phantom's own table.
EXPECTED_HU = {
    "air": (-1024.0, -980.0),
    "fat": (-130.0, -70.0),
    "muscle": (25.0, 65.0),
    "cortical_bone": (700.0, 1000.0),
    "cancellous_bone": (180.0, 320.0),
    "urine": (-10.0, 25.0),
    "gas": (-1024.0, -850.0),
}


def test_same_seed_same_slice_other_seed_other_anatomy():
    one, two = (pelvic_ct_slice(48, np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(one.image, two.image)
    assert one.level == two.level
    other = pelvic_ct_slice(48, np.random.default_rng(8), level=one.level)
    assert not np.array_equal(one.tissues["cortical_bone"], other.tissues["cortical_bone"])
    assert {pelvic_ct_slice(16, np.random.default_rng(seed)).level for seed in range(12)} == set(PELVIC_LEVELS)


@pytest.mark.parametrize("level", PELVIC_LEVELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_tissues_lie_in_their_hu_bands(level, seed):
    phantom = pelvic_ct_slice(160, np.random.default_rng(seed), level=level)
    assert phantom.image.shape == (160, 160) and phantom.image.dtype == np.float32
    assert phantom.spacing == (400.0 / 160, 400.0 / 160)
    assert phantom.image.min() >= -1024.0
    for tissue in ("air", "fat", "muscle", "cortical_bone", "cancellous_bone"):
        pixels = phantom.image[phantom.tissues[tissue]]
        assert pixels.size > 30, tissue
        low, high = EXPECTED_HU[tissue]
        assert low <= np.median(pixels) <= high, (tissue, np.median(pixels))
    assert (phantom.image > 600).sum() >= phantom.tissues["cortical_bone"].sum() // 2  # bone shows as bone
    body = phantom.image > -500
    assert 0.2 < body.mean() < 0.8 and not body[0].any() and not body[:, 0].any()  # a body outline in air


@pytest.mark.parametrize("seed", range(4))
def test_acetabular_level_has_bladder_in_front_of_the_rectal_gas(seed):
    phantom = pelvic_ct_slice(128, np.random.default_rng(seed), level="acetabular")
    urine, gas = phantom.tissues["urine"], phantom.tissues["gas"]
    assert urine.sum() > 20 and gas.sum() > 0
    for tissue, mask in (("urine", urine), ("gas", gas)):
        assert EXPECTED_HU[tissue][0] <= np.median(phantom.image[mask]) <= EXPECTED_HU[tissue][1], tissue
    rows = np.arange(128)[:, None]
    assert (rows * urine).sum() / urine.sum() < (rows * gas).sum() / gas.sum()  # anterior = upper rows
    columns = np.nonzero(phantom.tissues["cancellous_bone"].any(axis=0))[0]
    assert columns.min() < 40 and columns.max() > 88  # femoral heads on both sides


def test_written_kind_is_hu_nifti_with_spacing(tmp_path):
    folder = write_slice_phantoms("pelvic_ct", tmp_path / "pelvis", n=2, size=32, seed=1)
    entries = json.loads((folder / "dataset.json").read_text())["training"]
    assert [e["case_id"] for e in entries] == ["pelvic_ct_0000", "pelvic_ct_0001"]
    image = nib.load(folder / entries[0]["image"])
    assert image.shape == (32, 32) and image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.header.get_zooms(), (12.5, 12.5))
    expected = np.round(pelvic_ct_slice(32, np.random.default_rng((1, 0))).image)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), expected)


def test_bad_kind_and_level_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"'phantom_kind'.*'pelvic_ct'.*got 'pelvis'"):
        write_slice_phantoms("pelvis", tmp_path / "x")
    with pytest.raises(ValueError, match=r"level must be null or one of \['iliac', 'acetabular'\], got 'hip'"):
        pelvic_ct_slice(16, np.random.default_rng(0), level="hip")
