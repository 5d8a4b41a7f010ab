"""Tests of common.bundle: ``bundle_root`` is the folder of the configs that were loaded, however they were loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from common.bundle import bundle_config_parser, bundle_root_of, loaded_bundle_root

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "imports": ["$import common"],
    "bundle_root": "$common.bundle.loaded_bundle_root()",
    "output_dir": "$@bundle_root + '/samples'",
    "run": ["$print('ROOT=' + @bundle_root)"],
}


def _bundle(folder: Path) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(CONFIG))
    return folder / "configs" / "inference.json"


@pytest.mark.parametrize(
    "config, expected",
    [
        ("bundles/b/configs/inference.yaml", "bundles/b"),
        ("configs/inference.yaml", "."),
        ("/x/b_v0.1.0/configs/inference.yaml", "/x/b_v0.1.0"),
        (["/x/b/configs/train.yaml", "/elsewhere/overlay.yaml"], "/x/b"),
        ("/x/flat/inference.yaml", "/x/flat"),  # no configs/ folder: the folder itself, as MONAI's run() does
    ],
)
def test_bundle_root_of(config, expected) -> None:
    assert Path(bundle_root_of(config)) == Path(expected)


def test_bundle_root_of_from_inside_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b" / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "b" / "configs")
    assert Path(bundle_root_of("inference.yaml")).resolve() == tmp_path / "b"


def test_another_workflows_parser_gets_its_own_root(tmp_path: Path) -> None:
    """A workflow whose run evaluates another workflow's parser: the expression answers for the parser's owner."""
    first, second = _bundle(tmp_path / "first"), _bundle(tmp_path / "second")
    other = ConfigWorkflow(config_file=str(second), workflow_type=None, logging_file=False)
    outer = ConfigWorkflow(config_file=str(first), workflow_type=None, logging_file=False, run=["$@other_root"])
    outer.parser["other_root"] = lambda: other.parser.get_parsed_content("bundle_root")
    outer.parser["run"] = ["$@other_root()"]
    outer.initialize()
    assert [Path(p) for p in outer.run()] == [tmp_path / "second"]
    assert Path(outer.parser.get_parsed_content("bundle_root")) == tmp_path / "first"


def test_bundle_root_of_empty_list() -> None:
    with pytest.raises(ValueError, match="config_file"):
        bundle_root_of([])


def test_workflow_in_a_renamed_copy_resolves_to_the_copy(tmp_path: Path) -> None:
    """The case that used to resolve to the checkout: a copy of a real bundle's configs, renamed as zoo downloads
    are."""
    copy = tmp_path / "semantic_mri_v0.1.0"
    shutil.copytree(REPO_ROOT / "bundles" / "semantic_mri" / "configs", copy / "configs")
    workflow = ConfigWorkflow(
        config_file=str(copy / "configs" / "inference.yaml"), workflow_type=None, logging_file=False
    )
    assert Path(workflow.parser.get_parsed_content("bundle_root")) == copy  # evaluated outside the workflow's methods
    assert Path(workflow.parser.get_parsed_content("output_dir")) == copy / "samples"
    assert Path(workflow.parser.get_parsed_content("ckpt_dir")) == copy / "models"


def test_property_and_relative_path_inside_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _bundle(tmp_path / "renamed")
    monkeypatch.chdir(tmp_path / "renamed")
    workflow = ConfigWorkflow(config_file="configs/inference.json", workflow_type=None, logging_file=False)
    workflow.initialize()
    assert workflow.parser.get_parsed_content("bundle_root") == "."
    assert workflow.parser.get_parsed_content("output_dir") == "./samples"


def test_override_wins(tmp_path: Path) -> None:
    config = _bundle(tmp_path / "b")
    workflow = ConfigWorkflow(config_file=str(config), workflow_type=None, logging_file=False, bundle_root="/other")
    assert workflow.parser.get_parsed_content("output_dir") == "/other/samples"


def test_bare_parser_is_an_error_naming_the_key(tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(_bundle(tmp_path / "b")))
    with pytest.raises(RuntimeError, match="'bundle_root'"):
        loaded_bundle_root()
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("bundle_root")
    assert "bundle_root" in str(error.value) or "bundle_root" in str(error.value.__cause__)


def test_bundle_config_parser(tmp_path: Path) -> None:
    config = _bundle(tmp_path / "b")
    assert Path(bundle_config_parser(config).get_parsed_content("output_dir")) == tmp_path / "b" / "samples"
    assert bundle_config_parser([config], bundle_root="/o").get_parsed_content("output_dir") == "/o/samples"
    with pytest.raises(FileNotFoundError, match="config_file"):
        bundle_config_parser(tmp_path / "missing.yaml")


@pytest.mark.parametrize("inside", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_monai_bundle_run_from_inside_and_outside(tmp_path: Path, inside: bool) -> None:
    """``python -m monai.bundle run`` as a user types it: relative from inside the folder, absolute from elsewhere."""
    config = _bundle(tmp_path / "copy_v2")
    cwd, path = (tmp_path / "copy_v2", "configs/inference.json") if inside else (REPO_ROOT, str(config))
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", path],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"ROOT={'.' if inside else config.parent.parent}" in result.stdout
