"""The swin_ddpm bundle with the paper's feature network (``fid_network: paper``: the TorchScript Inception-v3 named by
``fid_paper_weights``, FID and IS reported under the paper's names; a small scripted network with the same call
convention stands in for the real file, nothing is downloaded) and with the quadratic timestep spacing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import REPO_ROOT, error_chain, make_workflow, run_workflow
from torch import nn

BUNDLE = "swin_ddpm"
SHARED = {
    "image_size": [16, 16],
    "unet_channels": [16, 32],
    "swin_levels": [False, True],
    "swin_num_heads": 2,
    "swin_window_size": 4,
    "unet_norm_num_groups": 8,
    "num_train_timesteps": 100,
}


class _StandInInception(nn.Module):
    """The call convention of the TorchScript Inception-v3 of the FID tools: 3-channel images in [0, 255];
    ``return_features`` gives the pool features, otherwise class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        pooled = torch.relu(self.features(x / 255.0)).mean((2, 3))
        if return_features:
            return pooled
        logits = pooled @ self.head.weight.T if no_output_bias else self.head(pooled)
        return logits.softmax(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("swin_ddpm_extras")
    train = {**SHARED, "num_workers": 0, "phantom#n": 6, "batch_size": 3, "max_epochs": 1, "val_interval": 1}
    make_workflow(BUNDLE, ("train",), "train", bundle_root=str(root), **train).run()
    return root


def test_quadratic_spacing_samples_and_a_bad_spacing_names_the_key(trained: Path, tmp_path: Path) -> None:
    settings = {**SHARED, "bundle_root": str(trained), "num_samples": 2, "num_inference_steps": 6, "seed": 0}
    entries = run_workflow(
        BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "q"), timestep_spacing="quadratic"
    )[0]
    even = run_workflow(BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "e"))[0]
    assert len(entries) == len(even) == 2
    # same seed and initial noise, other kept timesteps: other samples
    assert not np.allclose(nib.load(entries[0]["image"]).get_fdata(), nib.load(even[0]["image"]).get_fdata())
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ("inference",), None, **settings, output_dir=str(tmp_path / "x"), timestep_spacing="log")
    assert "`timestep_spacing` must be one of ('even', 'quadratic'), got 'log'" in error_chain(error.value)


def test_paper_inception_file_gives_fid_and_is(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(trained, root)
    run_workflow(
        BUNDLE,
        ("inference",),
        None,
        **SHARED,
        bundle_root=str(root),
        output_dir=str(tmp_path / "samples"),
        num_samples=4,
        num_inference_steps=4,
        seed=0,
    )
    weights = root / "models" / "inception-2015-12-05.pt"  # the file name large_files.yml gives
    assert "models/inception-2015-12-05.pt" in (REPO_ROOT / "bundles" / BUNDLE / "large_files.yml").read_text()
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_StandInInception().eval()), str(weights))
    settings = {**SHARED, "bundle_root": str(root), "sample_dir": str(tmp_path / "samples"), "fid_network": "paper"}
    run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval"), **settings)
    distribution = json.loads((tmp_path / "eval" / "report.json").read_text())["distribution"]
    fid = distribution["FID (paper, Inception-v3 pool)"]
    assert np.isfinite(fid) and fid >= 0.0
    assert distribution["IS (paper, Inception-v3) mean"] >= 1.0  # IS is >= 1 for any classifier
    assert np.isfinite(distribution["IS (paper, Inception-v3) std"])

    weights.write_bytes(b"not a network")
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ("evaluate",), None, output_dir=str(tmp_path / "eval2"), **settings)
    assert "config key 'fid_paper_weights'" in error_chain(error.value)
    assert not (tmp_path / "eval2" / "report.json").exists()
