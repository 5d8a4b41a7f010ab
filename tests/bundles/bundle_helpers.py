"""Helpers to run bundle configs in-process (``ConfigWorkflow``) at tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[2]


def config_files(bundle: str, *names: str) -> list[str]:
    return [str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.yaml") for name in names]


def config_parser(bundle: str, names: tuple[str, ...], **overrides: Any) -> ConfigParser:
    """The configs ``names`` of ``bundle`` read with MONAI's ConfigParser as ``monai.bundle`` reads them (no overlay
    unless named), ``overrides`` applied: for tests that check config values without running anything."""
    parser = ConfigParser()
    parser.read_config(config_files(bundle, *names))
    parser.update(overrides)
    return parser


def make_workflow(bundle: str, names: tuple[str, ...], workflow_type: str | None, **overrides: Any) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=config_files(bundle, *names), workflow_type=workflow_type, logging_file=False, **overrides
    )
    workflow.initialize()
    return workflow


def run_workflow(bundle: str, names: tuple[str, ...], workflow_type: str | None = None, **overrides: Any) -> Any:
    workflow = make_workflow(bundle, names, workflow_type, **overrides)
    result = workflow.run()
    workflow.finalize()
    return result


def load_plain_weights(
    path: Path, bundle: str, names: tuple[str, ...], net_key: str = "network_def", **overrides: Any
) -> torch.nn.Module:
    """Load ``path`` as a consumer does: ``torch.load(weights_only=True)``, a flat dict of tensors, then
    ``load_state_dict`` (strict) into ``net_key`` of the bundle's inference config; returns that network."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state, f"{path} holds {type(state).__name__}"
    assert all(isinstance(v, torch.Tensor) for v in state.values()), f"{path} is not a flat state dict of tensors"
    parser = ConfigParser()
    parser.read_config(config_files(bundle, *names))
    parser.update(overrides)
    network = parser.get_parsed_content(net_key)
    network.load_state_dict(state)
    return network


def error_chain(error: BaseException) -> str:
    """Messages of ``error`` and every exception it was raised from (config errors wrap the user-facing one)."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def run_torchrun(bundle: str, names: tuple[str, ...], args: list[str], port: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m monai.bundle run`` of ``names`` (CPU, gloo) from the repository root."""
    files = "[" + ",".join(f"'{f}'" for f in config_files(bundle, *names)) + "]"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    return subprocess.run(
        [*torchrun, "-m", "monai.bundle", "run", "--config_file", files, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_args(settings: dict[str, Any]) -> list[str]:
    """``--key value`` pairs for ``monai.bundle run`` (values without spaces, as the command line needs them)."""
    return [part for key, value in settings.items() for part in (f"--{key}", str(value).replace(" ", ""))]


def assert_same_samples(one: Path, two: Path, count: int, atol: float = 0.0) -> None:
    """``one`` and ``two`` hold the same ``count`` NIfTI files (relative paths) with the same arrays (within
    ``atol``; 0: bit for bit)."""
    import nibabel as nib
    import numpy as np

    first, second = (sorted(p.relative_to(folder) for p in folder.rglob("*.nii.gz")) for folder in (one, two))
    assert len(first) == count and first == second, f"{first} != {second}"
    for name in first:
        a, b = nib.load(one / name).get_fdata(), nib.load(two / name).get_fdata()
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=str(name))


# A stand-in for ``python -m monai.bundle ...`` run as if only the release's listed packages were installed: ``-c``
# puts the current directory first on sys.path exactly as ``-m`` does; a finder placed before all others makes every
# module of an unlisted distribution (and any ``common`` not inside the release folder) fail to import, as a missing
# package would, so MONAI's optional imports fall back and our code gets no help from this checkout. It reports where
# every loaded module came from.
_RUNNER = """
import importlib.machinery, json, os, runpy, sys
report = os.environ.pop("MODULE_REPORT")
blocked = set(json.loads(os.environ.pop("BLOCKED_MODULES")))
folder = os.path.realpath(os.environ.pop("RELEASE_FOLDER"))


class Unlisted:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.split(".")[0]
        if top == "common" and "." not in name:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            origin = os.path.realpath(spec.origin) if spec and spec.origin else ""
            if not origin.startswith(folder + os.sep):
                raise ModuleNotFoundError(f"no vendored module {name!r} in {folder}", name=name)
        elif top in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not listed in the release's metadata)", name=name)
        return None


sys.meta_path.insert(0, Unlisted)
sys.argv = ["monai.bundle", *sys.argv[1:]]
try:
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
finally:
    with open(report, "w") as handle:
        json.dump({name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}, handle)
"""


def _listed_distributions(folder: Path) -> set[str]:
    """The distributions the release's metadata lists (monai, torch, numpy and required_packages_version), with
    everything pip installs along with them."""
    import importlib.metadata
    import json
    import re

    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    allowed: set[str] = set()
    pending = ["monai", "torch", "numpy", *metadata["required_packages_version"]]
    while pending:
        name = re.split(r"[^A-Za-z0-9_.\-]", pending.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in allowed:
            continue
        allowed.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [r for r in requirements if "extra ==" not in r]
    return allowed


def _blocked_modules(folder: Path) -> list[str]:
    """Top-level modules of installed distributions that the release does not list (``common`` is judged apart)."""
    import importlib.metadata

    allowed = _listed_distributions(folder)
    blocked = []
    for module, owners in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module == "common":
            continue
        if not {owner.lower().replace("_", "-") for owner in owners} & allowed:
            blocked.append(module)
    return sorted(blocked)


def release_and_unpack(bundle: str, trained_root: Path, work: Path) -> Path:
    """Release a copy of ``bundles/<bundle>`` holding the consumer files of ``trained_root/models`` and unpack it
    into ``work/unpacked``; returns the unpacked bundle folder."""
    import shutil
    import zipfile

    from tools.release import consumer_weight_files, release

    source = work / "source" / bundle
    ignore = shutil.ignore_patterns("data", "models", "runs", "samples", "eval")
    shutil.copytree(REPO_ROOT / "bundles" / bundle, source, ignore=ignore)
    (source / "models").mkdir()
    for weight in consumer_weight_files(trained_root):
        shutil.copy2(trained_root / weight, source / weight)
    held = release(source, work / "dist")
    assert held["trained"], f"{trained_root}/models holds no model.pt"
    with zipfile.ZipFile(held["zip"]) as archive:
        archive.extractall(work / "unpacked")
    return work / "unpacked" / bundle


def run_released(folder: Path, config: str, args: list[str], inside: bool, report: Path) -> dict[str, str | None]:
    """Run ``monai.bundle run`` of the released ``folder``'s ``configs/<config>`` with only the packages its metadata
    lists importable: from inside the folder with a relative path, or from another folder with an absolute
    path and the folder on PYTHONPATH (the documented way). Returns {module name: file} of every module loaded; an
    unlisted import fails the run."""
    import json
    import os

    path = f"configs/{config}" if inside else str(folder / "configs" / config)
    env = {
        **os.environ,
        "MODULE_REPORT": str(report),
        "BLOCKED_MODULES": json.dumps(_blocked_modules(folder)),
        "RELEASE_FOLDER": str(folder),
    }
    if not inside:
        env["PYTHONPATH"] = str(folder)
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, "run", "--config_file", path, *args],
        cwd=folder if inside else folder.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "No module" in line]
    assert result.returncode == 0, "\n".join([*errors[-20:], result.stderr[-2000:]])
    return json.loads(report.read_text())


def assert_self_contained(folder: Path, modules: dict[str, str | None]) -> None:
    """Every ``common`` module the run loaded came from the released folder, and nothing of this checkout's tools."""
    ours = {name: file for name, file in modules.items() if name.split(".")[0] in ("common", "tools")}
    outside = {n: f for n, f in ours.items() if not (f and Path(f).resolve().is_relative_to(folder.resolve()))}
    assert ours and not outside, f"modules loaded from outside {folder}: {outside}"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def check_release_samples(
    bundle: str, trained_root: Path, work: Path, settings: dict[str, Any], args: list[str], inside: bool = True
) -> Path:
    """The contract's "a bundle travels" on a tiny checkpoint: release the trained bundle, unpack it in ``work``,
    sample with its inference config (``settings`` as --key repr(value) overrides, then ``args``) with only the
    listed packages, and check that the code came from the folder and that nothing was written outside it.
    Returns the unpacked folder."""
    folder = release_and_unpack(bundle, trained_root, work)
    checkout, before = _files(REPO_ROOT / "bundles" / bundle), _files(work)
    overrides = [arg for key, value in settings.items() for arg in (f"--{key}", repr(value))]
    modules = run_released(folder, "inference.yaml", [*overrides, *args], inside, work / "modules.json")
    assert_self_contained(folder, modules)
    assert list((folder / "samples").rglob("*.nii.gz")), f"no sample written under {folder / 'samples'}"
    assert _files(REPO_ROOT / "bundles" / bundle) == checkout
    new = [p for p in set(_files(work)) - set(before) if p != "modules.json"]
    assert all(p.startswith(f"unpacked/{bundle}/") for p in new), new  # phantom masks, samples: inside the folder
    return folder
