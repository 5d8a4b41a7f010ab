"""tools.verify_bundles: every bundle passes the contract checks, and each kind of breakage is reported."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from tools.release import release
from tools.verify_bundles import main, verify_bundle, verify_release

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT.parent / "shared" / "reference" / "meta_schema_20240725.json"
BUNDLES = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir())


@pytest.fixture(scope="module")
def schema() -> dict:
    if not SCHEMA_PATH.is_file():
        pytest.skip(f"model-zoo schema not found at {SCHEMA_PATH} (../shared beside the repository)")
    return json.loads(SCHEMA_PATH.read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_meets_the_contract(bundle: str, schema: dict) -> None:
    assert verify_bundle(REPO_ROOT / "bundles" / bundle, schema) == []


def _copy_bundle(name: str, tmp_path: Path) -> Path:
    """A copy of bundle ``name`` without its generated folders (data, checkpoints, runs, samples, reports)."""
    target = tmp_path / name
    shutil.copytree(
        REPO_ROOT / "bundles" / name,
        target,
        ignore=shutil.ignore_patterns("data", "models", "runs", "samples", "eval"),
    )
    (target / "models").mkdir()
    (target / "models" / ".gitkeep").touch()
    return target


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    return _copy_bundle("semantic_mri", tmp_path)


def _edit_yaml(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda b: (b / "LICENSE").unlink(), "missing file LICENSE"),
        (lambda b: (b / "docs" / "README.md").unlink(), "missing file docs/README.md"),
        (
            lambda b: _edit_yaml(b / "configs" / "metadata.json", '"task"', '"task_renamed"'),
            "'task' is a required property",
        ),
        (
            lambda b: _edit_yaml(b / "configs" / "metadata.json", '"version": "', '"version": "9'),
            "has no changelog entry",
        ),
        (
            lambda b: _edit_yaml(b / "configs" / "train.yaml", "val_interval: 10", "val_every: 10"),
            "missing config key 'val_interval'",
        ),
        (
            lambda b: _edit_yaml(b / "configs" / "inference.yaml", "num_samples: 1", "n_samples: 1"),
            "missing config key 'num_samples'",
        ),
        (
            lambda b: _edit_yaml(b / "configs" / "inference.yaml", "norm_num_groups: 32", "norm_num_groups: 7"),
            "'network_def' does not instantiate",
        ),
        (
            lambda b: (b / "large_files.yml").write_text("large_files:\n  - path: models/x.pt\n"),
            "missing ['url', 'hash_val', 'hash_type']",
        ),
    ],
)
def test_breakage_is_reported(broken: Path, schema: dict, breakage, expected: str) -> None:
    breakage(broken)
    problems = verify_bundle(broken, schema)
    assert any(expected in p for p in problems), problems


def test_command_line_exit_status(broken: Path, capsys) -> None:
    if not SCHEMA_PATH.is_file():
        pytest.skip("model-zoo schema not available")
    main("semantic_mri", schema=str(SCHEMA_PATH), bundles_dir=str(broken.parent))
    assert "semantic_mri: ok" in capsys.readouterr().out
    (broken / "LICENSE").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main("semantic_mri", schema=str(SCHEMA_PATH), bundles_dir=str(broken.parent))
    assert exit_info.value.code == 1
    with pytest.raises(FileNotFoundError, match="--schema"):
        main(schema=str(broken / "no_schema.json"))


def test_stage_overlays_apply_to_the_first_stage_only(tmp_path: Path, schema: dict) -> None:
    """latent_ct: train_diffusion.yaml is checked on top of train_autoencoder.yaml, not on inference.yaml."""
    target = _copy_bundle("latent_ct", tmp_path)
    assert verify_bundle(target, schema) == []
    _edit_yaml(target / "configs" / "train_diffusion.yaml", "unet_norm_num_groups: 32", "unet_norm_num_groups: 7")
    problems = verify_bundle(target, schema)
    assert any(p.startswith("train_autoencoder.yaml + train_diffusion.yaml: 'network_def'") for p in problems)
    assert not any(
        p.startswith(("inference.yaml + train_diffusion", "evaluate.yaml + train_diffusion")) for p in problems
    )


# ------------------------------------------------------------------------------------------------------ releases


@pytest.fixture
def released(tmp_path: Path) -> Path:
    """An unpacked release of a copy of semantic_mri with tiny weights."""
    source = _copy_bundle("semantic_mri", tmp_path / "source")
    torch.save({"w": torch.ones(2)}, source / "models" / "model.pt")
    held = release(source, tmp_path / "dist")
    with zipfile.ZipFile(held["zip"]) as archive:
        archive.extractall(tmp_path / "unpacked")
    return tmp_path / "unpacked" / "semantic_mri"


def test_release_passes_the_zoo_checks(released: Path, schema: dict, tmp_path: Path) -> None:
    assert verify_release(released, schema) == ([], [])
    assert verify_release(next((tmp_path / "dist").glob("*.zip")), schema) == ([], [])


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: (r / "LICENSE").unlink(), "missing file LICENSE"),
        (lambda r: (r / "models" / "model.pt").write_bytes(b"changed"), "does not match: expected sha256"),
        (lambda r: (r / "common" / "extra.py").write_text("import os\n"), "vendored code fails ruff"),
        (lambda r: (r / "common" / "extra.py").write_text("import scipy_not_there\n"), "scipy_not_there"),
        (
            lambda r: _edit_yaml(r / "configs" / "metadata.json", '"nibabel"', '"nibabel_renamed"'),
            "required_packages_version lacks ['nibabel']",
        ),
        (lambda r: r.rename(r.parent / "renamed"), "named 'renamed'"),
    ],
)
def test_release_breakage_is_reported(released: Path, schema: dict, breakage, expected: str) -> None:
    breakage(released)
    folder = released if released.exists() else released.parent / "renamed"
    problems, _ = verify_release(folder, schema)
    assert any(expected in p for p in problems), problems


def _drop_entries(released: Path) -> None:
    (released / "large_files.yml").write_text("large_files: []\n")


def test_release_without_weights_warns(released: Path, schema: dict) -> None:
    (released / "models" / "model.pt").unlink()
    _drop_entries(released)
    problems, warnings = verify_release(released, schema)
    assert problems == [] and warnings == ["no models/model.pt (preferred)"]


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: (r / "models" / "model.pt").unlink(), "has no url and is not there"),
        (_drop_entries, "ships without a large_files.yml entry"),
        (lambda r: torch.save({"network": {}}, r / "models" / "checkpoint_epoch=2.pt"), "resumable training state"),
        (lambda r: torch.save({"w": torch.ones(1), "epoch": 3}, r / "models" / "model_extra.pt"), "state dict of"),
        (lambda r: (r / "data").mkdir(), "data, samples and logs are not part of a bundle"),
    ],
)
def test_release_content_is_checked(released: Path, schema: dict, breakage, expected: str) -> None:
    breakage(released)
    problems, _ = verify_release(released, schema)
    assert any(expected in p for p in problems), problems
