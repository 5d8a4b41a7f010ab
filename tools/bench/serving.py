"""Benchmark of serving semantic_mri with the real MONAI Label server: seconds per request on this machine.

Run it in the serving environment (``make install-serve``)::

    .venv-serve/bin/python -m tools.bench serving                       # random weights (timing only)
    .venv-serve/bin/python -m tools.bench serving --weights path/to/model.pt \
        --png bundles/semantic_mri/docs/serving_request.png

It releases semantic_mri with the demo-sized network (``demo.yaml``: 32^3 grid, 6 mm voxels, channels 32/64/64) and
the given weights (a ``make demo`` model.pt, or random weights: time does not depend on them), starts
``monailabel start_server`` with apps/monailabel on 127.0.0.1, and posts a phantom label map (``requests`` + 1
times; the first, which loads the network, is reported apart). Each request runs the whole chain: load, checks,
resampling, one-hot, the fast sampler (``serve.yaml``: respaced DDPM, ``steps`` steps), resampling back and writing
the NIfTI. With ``--png`` the label map and the returned image are drawn side by side (central slices).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from common.bundle import bundle_config_parser
from common.data.prepare import ensure_phantom_dataset
from common.io import save_preview_png
from tools.bench.harness import REPO_ROOT, markdown_table

__all__ = ["bench_serving"]

BUNDLE = "semantic_mri"
START_TIMEOUT_S = 300


def _release(work: Path, weights: str | None, configs: list[Path]) -> Path:
    """An unpacked release of semantic_mri holding ``weights`` (or random demo-sized weights) as models/model.pt."""
    from tools.release import release

    source = work / "source" / BUNDLE
    ignore = shutil.ignore_patterns("data", "models", "runs", "samples", "eval")
    shutil.copytree(REPO_ROOT / "bundles" / BUNDLE, source, ignore=ignore)
    (source / "models").mkdir()
    if weights:
        shutil.copy2(weights, source / "models" / "model.pt")
    else:
        parser = bundle_config_parser(configs, bundle_root=str(source))
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), source / "models" / "model.pt")
    held = release(source, work / "dist")
    with zipfile.ZipFile(held["zip"]) as archive:
        archive.extractall(work / "unpacked")
    return work / "unpacked" / BUNDLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, timeout: float = 600) -> tuple[int, bytes]:
    """POST with an empty body; (HTTP status, response body), error statuses included."""
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_info(base: str, process: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> dict:
    """The server's ``/info/`` once it answers; RuntimeError with the end of its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"monailabel start_server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/info/", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"no answer on {base}/info/ within {timeout_s:g} s:\n{log.read_text()[-4000:]}")


def bench_serving(
    weights: str | None = None, requests: int = 5, steps: int = 25, png: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Seconds per ``POST /infer/semantic_mri`` (see the module docstring); markdown and the JSON results."""
    configs_dir = REPO_ROOT / "bundles" / BUNDLE / "configs"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = _release(work, weights, [configs_dir / "inference.yaml", configs_dir / "demo.yaml"])
        (folder / "configs" / "bench_steps.yaml").write_text(f"num_inference_steps: {int(steps)}\n")
        phantoms = work / "phantoms"
        phantom = {"dir": str(phantoms), "kind": "whole_head_mri", "n": 1, "shape": [32] * 3, "spacing": [6.0] * 3}
        ensure_phantom_dataset(phantoms, {**phantom, "seed": 0})
        studies = work / "studies"
        studies.mkdir()
        label_file = shutil.copy2(next((phantoms / "labelsTr").glob("*.nii.gz")), studies / "case1.nii.gz")
        app = work / "app"
        shutil.copytree(REPO_ROOT / "apps" / "monailabel", app, ignore=shutil.ignore_patterns("__pycache__"))
        port, log = _free_port(), work / "server.log"
        command = [
            str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(app), "--studies",
            str(studies), "--conf", "models", BUNDLE, "--conf", "bundles", str(folder.parent), "--conf", "overlays",
            "demo.yaml,serve.yaml,bench_steps.yaml", "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        env = {"MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the CLI runs `python`
        with open(log, "w") as handle:
            process = subprocess.Popen(
                command, cwd=work, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
            )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_info(base, process, log)
            seconds = []
            for _ in range(int(requests) + 1):
                start = time.perf_counter()
                status, content = post(f"{base}/infer/{BUNDLE}?image=case1&output=image")
                seconds.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {content[:2000]!r}; server log:\n{log.read_text()[-6000:]}")
        finally:
            process.kill()
            process.wait(timeout=30)
        served = work / "served.nii.gz"
        served.write_bytes(content)
        image = nib.load(str(served))
        label = nib.load(str(label_file))
        on_grid = image.shape == label.shape and bool(np.allclose(image.affine, label.affine, atol=1e-4))
        if png:
            label_array = np.asarray(label.dataobj, dtype=np.float32)
            save_preview_png(
                png,
                [("label map sent (0/1/2)", label_array), ("image returned", np.asarray(image.dataobj, np.float32))],
                masks=[label_array == 2, label_array == 2],
                overwrite=True,
            )
    first, rest = seconds[0], seconds[1:]
    median = statistics.median(rest)
    results = {
        "setup": (
            f"MONAI Label {_version('monailabel')} server on 127.0.0.1, apps/monailabel, semantic_mri released with "
            f"demo.yaml (32^3, 6 mm, channels 32/64/64) + serve.yaml (respaced DDPM, {steps} steps), "
            f"{'weights ' + Path(weights).name if weights else 'random weights'}, a {label.shape} phantom label map; "
            f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        ),
        "first_request_s": first,
        "request_s": rest,
        "median_request_s": median,
        "returned_on_label_grid": on_grid,
        "targets": [
            {"name": "median seconds per request", "value": round(median, 2), "target": "<= 30 s", "met": median <= 30},
            {"name": "image returned on the label map's grid", "value": on_grid, "target": "true", "met": on_grid},
        ],
    }
    rows = [
        ["first request (loads the network)", f"{first:.2f}"],
        [f"median of {len(rest)} further requests", f"{median:.2f}"],
        ["min / max", f"{min(rest):.2f} / {max(rest):.2f}"],
    ]
    markdown = (
        "# Serving semantic_mri with MONAI Label (`python -m tools.bench serving`)\n\n"
        f"{results['setup']}\n\n{markdown_table(rows, ['request', 'seconds'])}\n\n"
        + "\n".join(f"- {t['name']}: {t['value']} (target {t['target']}, met: {t['met']})" for t in results["targets"])
        + "\n"
    )
    return markdown, json.loads(json.dumps(results, default=str))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
