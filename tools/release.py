"""Release a bundle as the model zoo publishes one: ``dist/<bundle>_v<version>.zip`` holding a single folder.

Usage::

    python -m tools.release semantic_mri --out dist/          # or a path to a bundle folder

The folder holds ``configs/``, ``docs/``, ``LICENSE``, ``large_files.yml`` (sha256 of every file it lists that is
present, shipped weights added), the project's ``common`` package vendored next to ``configs/`` (the code the configs
import) and, when the bundle has been trained, the consumer weights of ``models/`` (``model.pt``, ``model_<net>.pt``
and the small JSON files inference reads); never the resumable training state, data, samples or logs.
``configs/metadata.json`` gets the versions of this environment: ``monai_version``, ``pytorch_version``,
``numpy_version`` and ``required_packages_version`` for every package the vendored code and the configs import
(:func:`required_packages`), so that installing what the metadata lists is enough to run it.

Unpacked anywhere, the bundle runs from inside its folder as any zoo bundle does (the current directory is on
``sys.path`` under ``python -m``, so the vendored ``common`` is the one imported)::

    cd semantic_mri && python -m monai.bundle run --config_file configs/inference.yaml

and from outside it with the folder on ``PYTHONPATH`` (MONAI 1.6 adds the bundle folder to ``sys.path`` only in
``ConfigWorkflow.run()``, after the configs' ``imports`` were evaluated)::

    PYTHONPATH=path/to/semantic_mri python -m monai.bundle run --config_file path/to/semantic_mri/configs/inference.yaml
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fire
import torch
import yaml

from common.checkpoint import file_hash

__all__ = [
    "CONSUMER_WEIGHTS",
    "RUNTIME_MODULES",
    "VENDORED_PACKAGES",
    "bundle_folder",
    "check_weights_only",
    "consumer_weight_files",
    "inference_files",
    "overlay_weight_files",
    "read_metadata",
    "release",
    "required_packages",
    "sha256",
    "main",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
VENDORED_PACKAGES = ("common",)
CONSUMER_WEIGHTS = ("models/model.pt", "models/model_*.pt", "models/*.json")
"""Files of ``models/`` a consumer needs when the inference config names none (see :func:`inference_files`);
everything else there (checkpoints with optimiser and engine state, training-only extractors) stays out of a release."""
RUNTIME_MODULES = {
    "yaml": "the configs are YAML, which monai.bundle reads with PyYAML",
    "fire": "the 'python -m monai.bundle' command line",
    "einops": "MONAI's attention blocks (DiffusionModelUNet with attention levels)",
    "tensorboard": "TensorBoardStatsHandler of the training configs",
}
"""Modules the configs need that no ``import`` statement shows: MONAI imports them lazily on the configs' behalf."""
_FRAMEWORK = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed member times: the same inputs give the same archive
_SKIP = {"__pycache__", ".pytest_cache"}
_LARGE_FILES_ENTRY = re.compile(r"large_files_entry\s*=\s*['\"]([^'\"]+)['\"]")


def bundle_folder(bundle: str | Path) -> Path:
    """``bundle`` as a folder: an existing path, else ``bundles/<bundle>`` of this checkout.

    Raises:
        FileNotFoundError: naming the path, when the folder or its ``configs/`` does not exist.
    """
    folder = Path(bundle)
    if not folder.is_dir():
        folder = REPO_ROOT / "bundles" / str(bundle)
    if not folder.is_dir():
        raise FileNotFoundError(f"bundle '{bundle}': no such folder (neither '{bundle}' nor '{folder}')")
    if not (folder / "configs").is_dir():
        raise FileNotFoundError(f"bundle folder '{folder}' has no 'configs' folder: not a MONAI bundle")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle folder, checked: readable, a ``version`` with its ``changelog`` entry,
    and a ``bundle_name`` that is the folder's name (a zoo download may add ``_v<version>``).

    Raises:
        FileNotFoundError / ValueError: naming the file and what is wrong.
    """
    path = folder / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist: every bundle needs configs/metadata.json")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"'{path}' is not valid JSON: {error}") from error
    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"'{path}': 'version' must be a non-empty string, found {version!r}")
    if version not in metadata.get("changelog", {}):
        raise ValueError(
            f"'{path}': version {version} has no entry in 'changelog' (found {list(metadata.get('changelog', {}))})"
        )
    name = metadata.get("bundle_name")
    folder_name = re.sub(rf"_v{re.escape(version)}$", "", folder.resolve().name)
    if name != folder_name:
        raise ValueError(
            f"bundle folder '{folder}' is named '{folder_name}' but '{path}' says bundle_name {name!r}: "
            "rename the folder or fix 'bundle_name'"
        )
    return metadata


def sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    return file_hash(path, "sha256")


def _python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if not _SKIP & set(path.parts):
            yield path


def _imported_modules(sources: Iterable[Path], configs: Iterable[Path]) -> set[str]:
    """Top-level module names imported by Python ``sources`` (any depth, so lazy imports count) and by the configs'
    ``$import x`` / ``$from x import y`` expressions."""
    modules: set[str] = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    pattern = re.compile(r"\$\s*(?:import|from)\s+([A-Za-z_]\w*)")
    for path in configs:
        modules |= set(pattern.findall(path.read_text()))
    return modules


def required_packages(folder: Path, code_roots: Iterable[Path] | None = None) -> dict[str, str]:
    """The pip distributions (name -> installed version) a bundle needs beyond monai, torch and numpy.

    Counted: every module imported by the code the configs use (``code_roots``: by default the ``common`` package
    vendored in ``folder`` when there is one, else this checkout's) and by the configs themselves, plus
    :data:`RUNTIME_MODULES`; the standard library and the bundle's own packages are left out.

    Raises:
        ModuleNotFoundError: naming the module, when an imported module belongs to no installed distribution.
    """
    if code_roots is None:
        code_roots = [folder / p if (folder / p).is_dir() else REPO_ROOT / p for p in VENDORED_PACKAGES]
    code_roots = list(code_roots)
    sources = [path for root in code_roots for path in _python_files(root)]
    if (folder / "scripts").is_dir():
        sources += list(_python_files(folder / "scripts"))
    configs = sorted((folder / "configs").glob("*.yaml")) + sorted((folder / "configs").glob("*.json"))
    modules = _imported_modules(sources, configs) | set(RUNTIME_MODULES)
    local = {root.name for root in code_roots} | {"scripts"}
    distributions = importlib.metadata.packages_distributions()
    required: dict[str, str] = {}
    for module in sorted(modules - set(sys.stdlib_module_names) - local - set(_FRAMEWORK)):
        names = distributions.get(module)
        if not names:
            raise ModuleNotFoundError(f"module '{module}' (imported by bundle '{folder.name}') is not installed")
        name = names[0]
        required[name.lower()] = importlib.metadata.version(name)
    return dict(sorted(required.items()))


def _weights_entries(config: Path) -> set[Path]:
    """The weight files a config names: every ``large_files_entry='...'`` literal and a top-level ``weights_entry``
    key (the large_files.yml entry of an overlay's own weights, e.g. ``models/lung_ct/model.pt``)."""
    text = config.read_text()
    named = {Path(m) for m in _LARGE_FILES_ENTRY.findall(text)}
    if config.suffix in (".yaml", ".yml"):
        content = yaml.safe_load(text)
        entry = content.get("weights_entry") if isinstance(content, dict) else None
        if isinstance(entry, str) and not entry.startswith(("$", "@")):
            named.add(Path(entry))
    return named


def inference_files(folder: Path) -> list[Path]:
    """The files the bundle's inference config loads from its folder: every ``large_files_entry='...'`` it names
    and its ``weights_entry`` (``models/model.pt``, ``models/model_autoencoder.pt``, ``models/latent_scale.json``,
    ...); when it names none, :data:`CONSUMER_WEIGHTS` (hidden files, e.g. a temp file of an interrupted write,
    never count)."""
    configs = sorted((folder / "configs").glob("inference.*"))
    named = {entry for path in configs for entry in _weights_entries(path)}
    if named:
        return sorted(named)
    found = {p.relative_to(folder) for pattern in CONSUMER_WEIGHTS for p in folder.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not p.name.startswith("."))


def overlay_weight_files(folder: Path, base: Iterable[Path] | None = None) -> dict[str, list[Path]]:
    """Overlay name -> the weight files it names with ``weights_entry`` when they differ from the base inference
    files (``base``, default :func:`inference_files`): an overlay with weights of its own (``configs/lung_ct.yaml``
    -> ``models/lung_ct/model.pt``)."""
    base = set(inference_files(folder) if base is None else base)
    overlays = {}
    for config in sorted((folder / "configs").glob("*.y*ml")):
        if config.stem == "inference":
            continue
        own = sorted(entry for entry in _weights_entries(config) if entry not in base)
        if own:
            overlays[config.stem] = own
    return overlays


def consumer_weight_files(folder: Path) -> list[Path]:
    """The weight files present in ``folder`` that a release ships (relative paths, sorted): all of the
    :func:`inference_files` or none, and for each overlay with weights of its own (:func:`overlay_weight_files`)
    all of its files or none; an overlay that was never trained is simply left out.

    Raises:
        FileNotFoundError: naming the missing ones, when only some of a set are present (inference would fail).
    """
    present = []
    base = inference_files(folder)
    for name, wanted in {"inference": base, **overlay_weight_files(folder, base)}.items():
        found = [p for p in wanted if (folder / p).is_file()]
        if found and len(found) < len(wanted):
            missing = [str(p) for p in wanted if p not in found]
            raise FileNotFoundError(
                f"bundle '{folder}': {name} needs {[str(p) for p in wanted]}, but {missing} is missing "
                "(train every stage first, or remove the partial weights)"
            )
        present.extend(found)
    return sorted(set(present))


def check_weights_only(path: Path) -> None:
    """Refuse a ``.pt`` file that is not a flat state dict of tensors loadable with ``weights_only=True``."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"'{path}' cannot be loaded with weights_only=True: {error}") from error
    nested = [k for k, v in content.items() if not isinstance(v, torch.Tensor)] if isinstance(content, dict) else None
    if nested is None or nested:
        found = type(content).__name__ if nested is None else f"non-tensor entries {nested[:5]}"
        raise ValueError(
            f"'{path}' must hold a state dict of tensors (inference weights), found {found}: "
            "is it a training checkpoint?"
        )


def _large_files(source: Path, folder: Path, shipped: list[Path]) -> str:
    """The release's ``large_files.yml``: every entry whose file is present gets its sha256 (an existing, different
    hash is an error), and every shipped weight file gets an entry."""
    path = source / "large_files.yml"
    content = yaml.safe_load(path.read_text()) if path.is_file() else None
    entries = list((content or {}).get("large_files") or [])
    listed = {Path(str(entry.get("path"))).parts: entry for entry in entries}
    for weight in shipped:
        if weight.parts not in listed:
            entry = {"path": str(weight), "url": "", "hash_val": None, "hash_type": "sha256"}
            entries.append(entry)
            listed[weight.parts] = entry
    for entry in entries:
        file = source / str(entry.get("path"))
        if not file.is_file():
            continue
        digest = sha256(file)
        if entry.get("hash_val") and (entry.get("hash_type") or "sha256") == "sha256" and entry["hash_val"] != digest:
            raise ValueError(
                f"'{file}' does not match its large_files.yml entry: "
                f"expected sha256 {entry['hash_val']}, found {digest}"
            )
        entry.update(hash_val=digest, hash_type="sha256")
    header = [
        "# Weight files of this release: path, url, hash_val (sha256), hash_type (model-zoo large_files format).",
        f"# Fetch the ones with a url: python -m monai.bundle download_large_files --bundle_path {folder.name}",
        "# Files with an empty url ship inside this release; download_large_files only checks their hash.",
    ]
    if not shipped:
        header.append(
            "# This release ships no trained weights: train first (see docs/README.md), which writes models/."
        )
    return "\n".join(header) + "\n" + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_SKIP, "*.pyc"))


def _stage(source: Path, stage: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    _copy_tree(source / "configs", stage / "configs")
    for optional in ("docs", "scripts"):
        if (source / optional).is_dir():
            _copy_tree(source / optional, stage / optional)
    for single in ("LICENSE",):
        if not (source / single).is_file():
            raise FileNotFoundError(f"'{source / single}' does not exist: every bundle needs a {single}")
        shutil.copy2(source / single, stage / single)
    for package in VENDORED_PACKAGES:
        _copy_tree(source / package if (source / package).is_dir() else REPO_ROOT / package, stage / package)
    shipped = consumer_weight_files(source)
    (stage / "models").mkdir(exist_ok=True)
    for weight in shipped:
        if weight.suffix == ".pt":
            check_weights_only(source / weight)
        (stage / weight).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / weight, stage / weight)
    (stage / "large_files.yml").write_text(_large_files(source, stage, shipped))
    metadata = dict(metadata)
    for module, key in _FRAMEWORK.items():
        metadata[key] = importlib.metadata.version(module)
    metadata["required_packages_version"] = required_packages(stage)
    (stage / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
    return {"weights": [str(w) for w in shipped], "trained": bool(shipped)}


def _zip(stage: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(stage.rglob("*")):
                name = str(path.relative_to(stage.parent)) + ("/" if path.is_dir() else "")
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = (0o40755 if path.is_dir() else 0o100644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, b"" if path.is_dir() else path.read_bytes())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def release(bundle: str | Path, out: str | Path = "dist") -> dict[str, Any]:
    """Write ``<out>/<bundle_name>_v<version>.zip`` (see the module docstring) and return what it holds:
    ``{"zip", "bundle", "version", "trained", "weights"}``. An existing zip of the same version is replaced."""
    source = bundle_folder(bundle)
    metadata = read_metadata(source)
    name, version = metadata["bundle_name"], metadata["version"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".release_") as work:
        stage = Path(work) / name
        stage.mkdir()
        held = _stage(source, stage, metadata)
        target = out / f"{name}_v{version}.zip"
        _zip(stage, target)
    if not held["trained"]:
        logger.warning(
            "bundle '%s' is not trained (none of %s exists): the release ships no weights",
            name,
            [str(p) for p in inference_files(source)],
        )
    return {"zip": str(target), "bundle": name, "version": version, **held}


def main(bundle: str, out: str = "dist") -> None:
    """Release ``bundle`` (a name under bundles/ or a folder) into ``out`` and print what was written."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    held = release(bundle, out)
    weights = ", ".join(held["weights"]) if held["weights"] else "none (the bundle is not trained)"
    print(f"{held['zip']}: {held['bundle']} {held['version']}, weights: {weights}")


if __name__ == "__main__":
    fire.Fire(main)
