"""The MONAI Label app (apps/monailabel) with the real server: `monailabel start_server` on 127.0.0.1 serves a tiny
released semantic_mri; a label map in, a NIfTI image on its grid out; refused inputs are HTTP 422 and the server goes
on serving. Needs the [serve] extra (make test runs it in .venv-serve)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="needs the [serve] extra: make test runs this in .venv-serve")

from serving_helpers import (  # noqa: E402
    AFFINE,
    BUNDLE,
    REPO_ROOT,
    SHAPE,
    TINY,
    free_port,
    label_map,
    tiny_release,
    write_label_map,
)

from tools.bench import serving  # noqa: E402

APP = REPO_ROOT / "apps" / "monailabel"
START_TIMEOUT_S = 120


def wait_for_info(base: str, process: subprocess.Popen, log: Path) -> dict:
    try:
        return serving.wait_for_info(base, process, log, START_TIMEOUT_S)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("monailabel")
    folder = tiny_release(work / "release")
    studies = work / "studies"
    studies.mkdir()
    write_label_map(studies / "case1.nii.gz", label_map())
    write_label_map(studies / "bad_labels.nii.gz", label_map(values=(1, 7)))
    write_label_map(studies / "nan_map.nii.gz", label_map(nan=True))
    app = work / "app"  # start_server creates model/, logs/, ... in the app folder: use a copy
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "lib", "bin"))
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "monailabel"),
        "start_server",
        "--app", str(app),
        "--studies", str(studies),
        "--conf", "models", BUNDLE,
        "--conf", "bundles", str(folder.parent),
        "--conf", "overlays", f"serve.yaml,{TINY}",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the CLI runs `python`
    log = work / "server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        info = wait_for_info(base, process, log)
        yield {"base": base, "info": info, "work": work, "studies": studies, "log": log}
    finally:
        process.kill()
        process.wait(timeout=30)


def read_nifti(content: bytes, path: Path) -> nib.Nifti1Image:
    path.write_bytes(content)
    return nib.load(str(path))


def test_label_map_in_image_on_its_grid_out_bad_inputs_refused(server) -> None:
    """/info/ lists the model; the image comes back on the label map's grid; NaN and foreign labels are 422 naming
    the problem, and the next request is served (the same seed gives the same image, another seed another one)."""
    base, work = server["base"], server["work"]
    model = server["info"]["models"][BUNDLE]
    assert model["type"] == "others" and model["labels"] == {} and "label map's grid" in model["description"]

    status, content = serving.post(f"{base}/infer/{BUNDLE}?image=case1&output=image")
    assert status == 200, (content[:2000], server["log"].read_text()[-6000:])
    first = read_nifti(content, work / "first.nii.gz")
    image = np.asarray(first.dataobj, dtype=np.float32)
    assert image.shape == SHAPE
    np.testing.assert_allclose(first.affine, AFFINE, atol=1e-4)
    assert np.isfinite(image).all() and image.std() > 0

    for case, message in [("bad_labels", "label values [7] are not allowed"), ("nan_map", "NaN")]:
        status, content = serving.post(f"{base}/infer/{BUNDLE}?image={case}&output=image")
        assert status == 422, (case, status, content[:2000], server["log"].read_text()[-6000:])
        detail = json.loads(content)["detail"]
        assert message in detail and case in detail, detail

    status, content = serving.post(f"{base}/infer/{BUNDLE}?image=case1&output=image")
    assert status == 200, (content[:2000], server["log"].read_text()[-6000:])
    again = np.asarray(read_nifti(content, work / "again.nii.gz").dataobj, dtype=np.float32)
    np.testing.assert_allclose(again, image, atol=1e-5)


def load_app_module():
    spec = importlib.util.spec_from_file_location("monailabel_app_main", APP / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_model_file_names_the_file_and_the_large_files_entry(tmp_path) -> None:
    folder = tiny_release(tmp_path / "release")
    (folder / "models" / "model.pt").unlink()
    app = load_app_module()
    with pytest.raises(RuntimeError) as error:
        app.SynthesisInferTask(str(folder), {}, ["serve.yaml", TINY])
    message = str(error.value)
    assert "models/model.pt" in message and "large_files.yml" in message and "ckpt_path" in message, message
