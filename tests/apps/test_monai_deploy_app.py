"""The MONAI Deploy app (apps/monai_deploy) as a user runs it:
`python -m apps.monai_deploy -i <in> -o <out> -m <bundle>`
on a tiny released semantic_mri; a label map in, a NIfTI image on its grid out; a refused label map and a missing
weight file stop the app with a message naming the file and the problem. Needs the [serve] extra (make test runs it
in .venv-serve)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monai.deploy.core", reason="needs the [serve] extra: make test runs this in .venv-serve")

from serving_helpers import AFFINE, REPO_ROOT, SHAPE, TINY, label_map, tiny_release, write_label_map  # noqa: E402

RUN_TIMEOUT_S = 300


def run_app(inputs: Path, output: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "apps.monai_deploy", "-i", str(inputs), "-o", str(output), "-m", str(bundle),
               "--overlays", f"serve.yaml,{TINY}", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=output.parent, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_release(tmp_path_factory.mktemp("deploy") / "release")


def test_label_map_in_synthetic_image_on_its_grid_out(bundle, tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_label_map(inputs / "case1.nii.gz", label_map())
    result = run_app(inputs, tmp_path / "out", bundle)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = nib.load(str(tmp_path / "out" / "case1_synthetic.nii.gz"))
    image = np.asarray(written.dataobj)
    assert image.dtype == np.float32 and image.shape == SHAPE
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-4)
    assert np.isfinite(image).all() and image.std() > 0 and image.min() < 0  # an image in [-1, 1], not a uint8 label


def test_refused_label_map_and_missing_weights_name_the_problem(bundle, tmp_path) -> None:
    bad = write_label_map(tmp_path / "bad_labels.nii.gz", label_map(values=(1, 7)))
    result = run_app(bad, tmp_path / "out", bundle)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "bad_labels.nii.gz" in output and "label values [7] are not allowed" in output, output[-3000:]

    (tmp_path / "moved").mkdir()
    weights = bundle / "models" / "model.pt"
    weights.rename(tmp_path / "moved" / "model.pt")
    try:
        good = write_label_map(tmp_path / "case1.nii.gz", label_map())
        result = run_app(good, tmp_path / "out2", bundle)
    finally:
        (tmp_path / "moved" / "model.pt").rename(weights)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models/model.pt" in output and "large_files.yml" in output, output[-3000:]
