"""Tests of tools/make_phantoms.py, called in-process."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tools.make_phantoms import main


def test_writes_whole_head_phantoms_and_reports_them(tmp_path, capsys):
    main("semantic_mri", out=str(tmp_path / "heads"), n=2, size=16, seed=1)
    printed = capsys.readouterr().out
    assert "2 'whole_head_mri' phantom case(s) of 16x16x16 voxels (12x12x12 mm)" in printed
    assert str(tmp_path / "heads") in printed
    description = json.loads((tmp_path / "heads" / "dataset.json").read_text())
    assert description["numTraining"] == 2
    assert all((tmp_path / "heads" / entry["label"]).is_file() for entry in description["training"])


@pytest.mark.parametrize("kind", ["semantic_mri_brats", "brats_mri"])
def test_writes_brats_phantoms(tmp_path, capsys, kind):
    main(kind, out=str(tmp_path / "brats"), n=1, size=16)
    assert "16x16x12 voxels" in capsys.readouterr().out
    case = tmp_path / "brats" / "BraTS_phantom_00000"
    assert sorted(p.name for p in case.iterdir()) == [
        f"BraTS_phantom_00000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")
    ]


@pytest.mark.parametrize("kind", ["paired_petct", "head_neck_petct"])
def test_writes_head_neck_petct_phantoms_in_hecktor_layout(tmp_path, capsys, kind):
    main(kind, out=str(tmp_path / "petct"), n=1, size=16)
    assert "1 'head_neck_petct' phantom case(s) of 16x16x13 voxels" in capsys.readouterr().out
    out = tmp_path / "petct"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "HN_phantom_000__CT.nii.gz",
        "HN_phantom_000__PT.nii.gz",
    ]
    assert [p.name for p in (out / "labelsTr").iterdir()] == ["HN_phantom_000.nii.gz"]
    description = json.loads((out / "dataset.json").read_text())
    assert description["modality"] == {"0": "CT", "1": "PT"}
    ct, pt = (nib.load(out / path) for path in description["training"][0]["image"])
    assert ct.shape == (16, 16, 13) and pt.shape[0] < ct.shape[0]
    assert not np.allclose(pt.affine, ct.affine)


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        main("lung_ct", out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["latent_ct", "thorax_ct"])
def test_writes_thorax_ct_phantoms_with_one_mask_per_structure(tmp_path, capsys, kind):
    main(kind, out=str(tmp_path / "lung"), n=1, size=16)
    assert "1 'thorax_ct' phantom case(s) of 16x16x14 voxels" in capsys.readouterr().out
    case = tmp_path / "lung" / "LUNG_phantom_000"
    assert sorted(p.name for p in case.iterdir()) == ["ct.nii.gz", "masks"]
    masks = sorted(p.name for p in (case / "masks").iterdir())
    assert {"GTV-1.nii.gz", "Lung-Left.nii.gz", "Lung-Right.nii.gz", "Heart.nii.gz"} <= set(masks)
    entry = json.loads((tmp_path / "lung" / "dataset.json").read_text())["training"][0]
    assert entry["case_id"] == "LUNG_phantom_000" and entry["image"] == "LUNG_phantom_000/ct.nii.gz"
    assert sorted(f"{name}.nii.gz" for name in entry["masks"]) == masks
