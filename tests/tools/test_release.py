"""Tests of tools/release.py: the zip layout, metadata checks, hashes, weights-only weights and required packages."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tools.release import bundle_folder, read_metadata, release, required_packages, sha256

REPO_ROOT = Path(__file__).resolve().parents[2]


def _copy(tmp_path: Path, bundle: str = "semantic_mri", name: str | None = None) -> Path:
    target = tmp_path / (name or bundle)
    shutil.copytree(
        REPO_ROOT / "bundles" / bundle, target, ignore=shutil.ignore_patterns("data", "samples", "runs", "eval", "*.pt")
    )
    return target


def _members(path: str) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def test_untrained_release_says_so_and_ships_no_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _copy(tmp_path)
    with caplog.at_level("WARNING"):
        held = release(folder, tmp_path / "dist")
    assert held["trained"] is False and held["weights"] == []
    assert "not trained" in caplog.text and "ships no weights" in caplog.text
    version = json.loads((folder / "configs" / "metadata.json").read_text())["version"]
    assert Path(held["zip"]).name == f"semantic_mri_v{version}.zip"
    members = _members(held["zip"])
    assert all(m.startswith("semantic_mri/") for m in members)  # one folder, as the zoo publishes
    for required in ("configs/metadata.json", "configs/inference.yaml", "LICENSE", "large_files.yml", "docs/README.md"):
        assert f"semantic_mri/{required}" in members
    assert "semantic_mri/common/__init__.py" in members and "semantic_mri/common/bundle.py" in members
    assert not [m for m in members if m.endswith(".pt") or "__pycache__" in m]
    with zipfile.ZipFile(held["zip"]) as archive:
        large_files = archive.read("semantic_mri/large_files.yml").decode()
    assert "ships no trained weights" in large_files and "--bundle_path semantic_mri" in large_files
    assert list((tmp_path / "dist").iterdir()) == [Path(held["zip"])]  # no staging folder or partial file left


def test_trained_release_ships_consumer_weights_with_hashes(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    weights = {"layer.weight": torch.ones(2, 2)}
    torch.save(weights, folder / "models" / "model.pt")
    torch.save({"network": weights, "optimizer": {"state": {}}}, folder / "models" / "checkpoint_epoch=1.pt")
    (folder / "models" / ".tmp-1234-model.pt").write_bytes(b"left by an interrupted write")
    held = release(folder, tmp_path / "dist")
    assert held["trained"] is True
    assert held["weights"] == ["models/model.pt"]  # what inference.yaml loads; no temp file, no training state
    members = _members(held["zip"])
    assert "semantic_mri/models/model.pt" in members and "semantic_mri/models/checkpoint_epoch=1.pt" not in members
    with zipfile.ZipFile(held["zip"]) as archive:
        entries = yaml.safe_load(archive.read("semantic_mri/large_files.yml"))["large_files"]
        metadata = json.loads(archive.read("semantic_mri/configs/metadata.json"))
    by_path = {e["path"]: e for e in entries}
    assert by_path["models/model.pt"]["hash_val"] == sha256(folder / "models" / "model.pt")
    assert by_path["models/model.pt"]["hash_type"] == "sha256"
    assert metadata["pytorch_version"] == importlib.metadata.version("torch")
    assert {"nibabel", "pytorch-ignite", "pyyaml", "fire"} <= set(metadata["required_packages_version"])


def test_release_refuses_a_training_checkpoint_as_model_pt(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    torch.save({"network": {"w": torch.ones(1)}, "epoch": 3}, folder / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt.*state dict of tensors"):
        release(folder, tmp_path / "dist")


def test_hash_mismatch_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    torch.save({"w": torch.ones(1)}, folder / "models" / "model.pt")
    wrong = "0" * 64
    (folder / "large_files.yml").write_text(
        yaml.safe_dump(
            {"large_files": [{"path": "models/model.pt", "url": "", "hash_val": wrong, "hash_type": "sha256"}]}
        )
    )
    with pytest.raises(ValueError) as error:
        release(folder, tmp_path / "dist")
    message = str(error.value)
    assert "model.pt" in message and wrong in message and sha256(folder / "models" / "model.pt") in message


def test_renamed_download_folder_is_accepted(tmp_path: Path) -> None:
    version = json.loads((REPO_ROOT / "bundles" / "semantic_mri" / "configs" / "metadata.json").read_text())["version"]
    folder = _copy(tmp_path, name=f"semantic_mri_v{version}")
    assert read_metadata(folder)["bundle_name"] == "semantic_mri"


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: shutil.rmtree(f / "configs"), "has no 'configs' folder"),
        (lambda f: (f / "configs" / "metadata.json").unlink(), "metadata.json' does not exist"),
        (lambda f: f.rename(f.parent / "other_name"), "named 'other_name' but"),
    ],
)
def test_bad_bundle_folders_are_named(tmp_path: Path, change, match: str) -> None:
    folder = _copy(tmp_path)
    change(folder)
    target = folder if folder.exists() else folder.parent / "other_name"
    with pytest.raises((FileNotFoundError, ValueError), match=match) as error:
        release(target, tmp_path / "dist")
    assert str(target) in str(error.value)


def test_version_must_be_in_changelog(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    path = folder / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["version"] = "9.9.9"
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"9\.9\.9 has no entry in 'changelog'"):
        release(folder, tmp_path / "dist")


def test_unknown_bundle_name() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_bundle"):
        bundle_folder("no_such_bundle")


def test_required_packages_follow_the_imports(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    code = tmp_path / "code" / "pkg"
    code.mkdir(parents=True)
    (code / "mod.py").write_text("import json\nimport torch\n\ndef f():\n    import nibabel\n")
    found = required_packages(folder, [code])
    assert "nibabel" in found and "torch" not in found and "json" not in found  # lazy import counted, stdlib not
    (code / "bad.py").write_text("import surely_not_installed_module\n")
    with pytest.raises(ModuleNotFoundError, match="surely_not_installed_module"):
        required_packages(folder, [code])


@pytest.mark.parametrize("bundle", ["semantic_mri", "paired_petct", "latent_ct", "swin_ddpm", "mammo_guidance"])
def test_metadata_lists_every_package_the_code_imports(bundle: str) -> None:
    folder = REPO_ROOT / "bundles" / bundle
    listed = json.loads((folder / "configs" / "metadata.json").read_text())["required_packages_version"]
    missing = sorted(set(required_packages(folder)) - set(listed))
    assert not missing, f"{bundle}/configs/metadata.json: required_packages_version lacks {missing}"


def test_partial_weights_are_an_error_naming_the_missing_files(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "latent_ct")
    torch.save({"w": torch.ones(1)}, folder / "models" / "model.pt")  # stage 2 weights without stage 1 or the scale
    with pytest.raises(FileNotFoundError, match=r"model_autoencoder\.pt.*latent_scale\.json.*missing"):
        release(folder, tmp_path / "dist")
    torch.save({"w": torch.ones(1)}, folder / "models" / "model_autoencoder.pt")
    (folder / "models" / "latent_scale.json").write_text('{"scale_factor": 0.5}')
    assert release(folder, tmp_path / "dist")["weights"] == [
        "models/latent_scale.json",
        "models/model.pt",
        "models/model_autoencoder.pt",
    ]


def test_overlay_weights_ship_when_trained_and_are_hashed(tmp_path: Path) -> None:
    """mammo_guidance's lung_ct.yaml keeps its weights in models/lung_ct/: a release ships them beside the base
    model when trained, alone when only the overlay was trained, and never half of a set."""
    folder = _copy(tmp_path, "mammo_guidance")
    lung = folder / "models" / "lung_ct" / "model.pt"
    lung.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, lung)
    torch.save({"network": {"w": torch.zeros(2)}, "epoch": 1}, lung.parent / "checkpoint_epoch=1.pt")
    held = release(folder, tmp_path / "dist")
    assert held["trained"] and held["weights"] == ["models/lung_ct/model.pt"]  # the mammography model untrained
    torch.save({"w": torch.ones(2)}, folder / "models" / "model.pt")
    held = release(folder, tmp_path / "dist")
    assert held["weights"] == ["models/lung_ct/model.pt", "models/model.pt"]
    members = _members(held["zip"])
    assert "mammo_guidance/models/lung_ct/model.pt" in members
    assert not [m for m in members if "checkpoint_epoch" in m]
    with zipfile.ZipFile(held["zip"]) as archive:
        entries = {e["path"]: e for e in yaml.safe_load(archive.read("mammo_guidance/large_files.yml"))["large_files"]}
    assert entries["models/lung_ct/model.pt"]["hash_val"] == sha256(lung)
    torch.save({"network": {"w": torch.zeros(2)}}, lung)  # a training checkpoint in the overlay's place
    with pytest.raises(ValueError, match=r"lung_ct.model\.pt.*state dict of tensors"):
        release(folder, tmp_path / "dist")
