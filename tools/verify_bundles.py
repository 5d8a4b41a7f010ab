"""Check every bundle against the project's bundle contract.

For each ``bundles/<name>/``: the required files exist; ``configs/metadata.json`` is valid against a model-zoo schema
and has a changelog entry for its version; ``large_files.yml`` entries are complete; the contract's config keys are
present in the training and inference configs (overlays applied); and every network definition (``network_def`` and
any ``*_network_def``) of every config and overlay combination instantiates.

With ``--release`` it checks a release zip (or its unpacked folder) the way the model zoo's CI does: necessary files
``configs/metadata.json`` and ``LICENSE``, preferred ``models/model.pt`` and an inference config (warnings), schema and
changelog, ``bundle_name``, large-file entries with sha256 hashes matching the files present, every package the code
imports listed in ``required_packages_version``, and the vendored code passing ruff at 120 columns.

Usage::

    python -m tools.verify_bundles --schema ../shared/reference/meta_schema_20240725.json
    python -m tools.verify_bundles semantic_mri --schema ../shared/reference/meta_schema_20240725.json
    python -m tools.verify_bundles --release dist/semantic_mri_v0.1.0.zip \\
        --schema ../shared/reference/meta_schema_20240725.json

Prints one line per problem and exits with status 1 if there is any.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fire
import jsonschema
import yaml
from monai.bundle import ConfigParser

from common.bundle import bundle_config_parser
from common.checkpoint import file_hash
from tools.release import (
    VENDORED_PACKAGES,
    check_weights_only,
    inference_files,
    overlay_weight_files,
    read_metadata,
    required_packages,
)

__all__ = [
    "REQUIRED_FILES",
    "RELEASE_REQUIRED_FILES",
    "TRAIN_KEYS",
    "INFERENCE_KEYS",
    "verify_bundle",
    "verify_release",
    "main",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED_FILES = (
    "LICENSE",
    "large_files.yml",
    "configs/metadata.json",
    "configs/inference.yaml",
    "configs/evaluate.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/multi_gpu_inference.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "models/.gitkeep",
)
RELEASE_REQUIRED_FILES = ("configs/metadata.json", "LICENSE")  # the model zoo CI's necessary files
TRAIN_KEYS = (
    "bundle_root",
    "device",
    "dataset_dir",
    "output_dir",
    "network_def",
    "network",
    "train#trainer",
    "train#trainer#max_epochs",
    "train#dataset",
    "train#dataset#data",
    "train#handlers",
    "validate#evaluator",
    "val_interval",
)
INFERENCE_KEYS = ("bundle_root", "device", "network_def", "inferer", "output_dir", "num_samples", "seed")
LARGE_FILE_FIELDS = ("path", "url", "hash_val", "hash_type")
MULTI_GPU = "multi_gpu_train.yaml"
MULTI_GPU_INFERENCE = "multi_gpu_inference.yaml"
MULTI_GPU_OVERLAYS = (MULTI_GPU, MULTI_GPU_INFERENCE)


def _train_configs(configs: Path) -> list[Path]:
    return sorted(p for p in configs.glob("train*.yaml"))


def _overlays(configs: Path) -> list[Path]:
    """Config files that are not stand-alone workflows (no ``run`` section), multi-GPU overlays excluded."""
    found = []
    for path in sorted(configs.glob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        if "run" not in content and path.name not in MULTI_GPU_OVERLAYS:
            found.append(path)
    return found


def _stage_overlays(configs: Path) -> list[Path]:
    """Overlays that are a later training stage (``train_<stage>.yaml`` without ``run``, e.g. train_diffusion.yaml):
    they apply to the stand-alone training configs only."""
    return [p for p in _overlays(configs) if p.name.startswith("train")]


def _parser(files: list[Path], bundle_root: Path) -> ConfigParser:
    return bundle_config_parser(files, bundle_root=str(bundle_root))


def _check_files(root: Path) -> Iterator[str]:
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            yield f"missing file {name}"
    if not _train_configs(root / "configs"):
        yield "missing configs/train.yaml (or train_<stage>.yaml)"


def _check_metadata(root: Path, schema: dict) -> Iterator[str]:
    path = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        yield f"metadata.json unreadable: {e}"
        return
    for error in sorted(jsonschema.Draft201909Validator(schema).iter_errors(metadata), key=str):
        yield f"metadata.json: {'/'.join(map(str, error.path)) or '<root>'}: {error.message}"
    if metadata.get("version") not in metadata.get("changelog", {}):
        yield f"metadata.json: version {metadata.get('version')!r} has no changelog entry"


def _check_large_files(root: Path) -> Iterator[str]:
    path = root / "large_files.yml"
    if not path.is_file():
        return
    content = yaml.safe_load(path.read_text()) or {}
    entries = content.get("large_files", []) if isinstance(content, dict) else None
    if not isinstance(entries, list):
        yield "large_files.yml: expected a 'large_files' list"
        return
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            yield f"large_files.yml entry {i}: expected a mapping with {list(LARGE_FILE_FIELDS)}, got {entry!r}"
            continue
        # url may be empty for a file shipped inside a release (download_large_files then only checks its hash)
        missing = [f for f in LARGE_FILE_FIELDS if f not in entry or (f != "url" and not entry.get(f))]
        if missing:
            yield f"large_files.yml entry {i}: missing {missing}"
            continue
        file = root / str(entry["path"])
        if not file.is_file():
            if not entry.get("url"):
                yield f"large_files.yml entry {i}: '{file}' has no url and is not there: nothing can fetch it"
            continue
        try:
            found = file_hash(file, str(entry["hash_type"]))
        except ValueError as error:
            yield f"large_files.yml entry {i}: {error}"
            continue
        if found != str(entry["hash_val"]).lower():
            yield (
                f"large_files.yml entry {i}: '{file}' does not match: expected {entry['hash_type']} "
                f"{entry['hash_val']}, found {found}"
            )


def _config_sets(configs: Path) -> list[tuple[str, list[Path]]]:
    """(label, files) for every stand-alone config alone and with each overlay."""
    main = [
        p for p in sorted(configs.glob("*.yaml")) if p not in _overlays(configs) and p.name not in MULTI_GPU_OVERLAYS
    ]
    stages = _stage_overlays(configs)
    variants = [o for o in _overlays(configs) if o not in stages]
    sets = []
    for config in main:
        sets.append((config.name, [config]))
        sets += [(f"{config.name} + {o.name}", [config, o]) for o in variants]
        if config.name.startswith("train"):
            for stage in stages:
                sets.append((f"{config.name} + {stage.name}", [config, stage]))
                sets += [(f"{config.name} + {stage.name} + {o.name}", [config, stage, o]) for o in variants]
    return sets


def _check_configs(root: Path) -> Iterator[str]:
    configs = root / "configs"
    trains = {p.name for p in _train_configs(configs)} - {p.name for p in _stage_overlays(configs)}
    for label, files in _config_sets(configs):
        try:
            parser = _parser(files, root)
        except Exception as e:
            yield f"{label}: cannot be read ({e})"
            continue
        required = (
            TRAIN_KEYS if files[0].name in trains else INFERENCE_KEYS if files[0].name == "inference.yaml" else ()
        )
        for key in required:
            if key not in parser:
                yield f"{label}: missing config key '{key}'"
        for key in [k for k in parser.get() if k == "network_def" or k.endswith("_network_def")]:
            try:
                parser.get_parsed_content(key, instantiate=True)
            except Exception as e:
                yield f"{label}: '{key}' does not instantiate: {str(e).splitlines()[0]} ({e.__cause__ or ''})"
    if (configs / MULTI_GPU).is_file():
        for train in sorted(trains):
            for stage in [None, *_stage_overlays(configs)]:
                files = [configs / train, *([stage] if stage else []), configs / MULTI_GPU]
                try:
                    _parser(files, root)
                except Exception as e:
                    yield f"{' + '.join(f.name for f in files)}: cannot be read ({e})"
    if (configs / MULTI_GPU_INFERENCE).is_file():
        files = [configs / "inference.yaml", configs / MULTI_GPU_INFERENCE]
        try:
            parser = _parser(files, root)
        except Exception as e:
            yield f"inference.yaml + {MULTI_GPU_INFERENCE}: cannot be read ({e})"
        else:
            missing = [key for key in ("device", "initialize", "run", "finalize") if key not in parser]
            if missing:
                yield f"inference.yaml + {MULTI_GPU_INFERENCE}: missing config keys {missing}"


def _check_vendored_code(root: Path) -> Iterator[str]:
    """The code a release carries passes ruff at 120 columns (the zoo lints custom code with flake8 at 120)."""
    folders = [str(root / p) for p in (*VENDORED_PACKAGES, "scripts") if (root / p).is_dir()]
    if not folders:
        return
    if importlib.util.find_spec("ruff") is None:
        yield "cannot lint the vendored code: ruff is not installed (pip install -e '.[dev]')"
        return
    command = [sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "120", "--select", "E,F,W"]
    command += ["--output-format", "concise"]
    result = subprocess.run([*command, *folders], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        yield f"vendored code fails ruff: {' | '.join(lines[:10]) or result.stderr.strip()}"


def _check_release_models(root: Path) -> Iterator[str]:
    """A release ships what inference loads and nothing of the training: every inference file listed in
    ``large_files.yml``, ``.pt`` files that are plain state dicts, no training checkpoints, data, samples or logs."""
    listing = root / "large_files.yml"
    content = yaml.safe_load(listing.read_text()) if listing.is_file() else None
    entries = (content or {}).get("large_files") or [] if isinstance(content, dict) else []
    listed = {Path(str(e.get("path"))).parts for e in entries if isinstance(e, dict)}
    overlays = [w for files in overlay_weight_files(root).values() for w in files]
    for weight in [*inference_files(root), *overlays]:
        if (root / weight).is_file() and weight.parts not in listed:
            yield f"'{root / weight}' ships without a large_files.yml entry (no hash to check it against)"
    for path in sorted((root / "models").rglob("*.pt")) if (root / "models").is_dir() else []:
        if "checkpoint" in path.name:
            yield f"'{path}' looks like resumable training state: a release ships inference weights only"
            continue
        try:
            check_weights_only(path)
        except ValueError as error:
            yield str(error)
    for folder in ("data", "samples", "runs", "eval"):
        if (root / folder).exists():
            yield f"'{root / folder}' is in the release: data, samples and logs are not part of a bundle"


def _check_release_metadata(root: Path) -> Iterator[str]:
    try:
        metadata = read_metadata(root)
    except (OSError, ValueError) as error:
        yield str(error)
        return
    listed = set(metadata.get("required_packages_version") or {})
    try:
        missing = sorted(set(required_packages(root)) - listed)
    except ModuleNotFoundError as error:
        yield str(error)
        return
    if missing:
        yield f"configs/metadata.json: required_packages_version lacks {missing} (imported by the bundle's code)"


def verify_release(path: str | Path, schema: dict) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a released bundle (a zip or an unpacked folder), checked as the model zoo's CI does:
    required files, preferred files, metadata schema and changelog, the folder named as the metadata says, large-file
    entries with hashes that match the files present, every imported package listed, and vendored code passing ruff."""
    path = Path(path)
    if path.suffix == ".zip":
        with tempfile.TemporaryDirectory() as work:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(work)
            folders = [p for p in Path(work).iterdir() if p.is_dir()]
            if len(folders) != 1:
                return [f"'{path}': expected one bundle folder in the zip, found {sorted(p.name for p in folders)}"], []
            return verify_release(folders[0], schema)
    if not path.is_dir():
        return [f"'{path}': no such release folder or zip"], []
    problems = [f"missing file {name}" for name in RELEASE_REQUIRED_FILES if not (path / name).is_file()]
    warnings = [f"no {name} (preferred)" for name in ("models/model.pt",) if not (path / name).is_file()]
    if not any((path / "configs" / f"inference.{suffix}").is_file() for suffix in ("json", "yaml")):
        warnings.append("no configs/inference.json or configs/inference.yaml (preferred)")
    if (path / "configs" / "metadata.json").is_file():
        problems += _check_metadata(path, schema)
        problems += _check_release_metadata(path)
    problems += _check_large_files(path)
    problems += _check_release_models(path)
    problems += _check_vendored_code(path)
    return problems, warnings


def verify_bundle(root: str | Path, schema: dict) -> list[str]:
    """All contract problems of the bundle at ``root`` (empty when it passes)."""
    root = Path(root)
    problems = list(_check_files(root))
    if (root / "configs" / "metadata.json").is_file():
        problems += _check_metadata(root, schema)
    problems += _check_large_files(root)
    if (root / "configs").is_dir():
        problems += _check_configs(root)
    return problems


def main(*bundles: str, schema: str, bundles_dir: str = str(REPO_ROOT / "bundles"), release: str | None = None) -> None:
    """Verify the named bundles (default: all) against the contract, or with ``--release`` a release zip or folder
    as the model zoo's CI would; exit 1 on any problem."""
    schema_path = Path(schema)
    if not schema_path.is_file():
        raise FileNotFoundError(
            f"--schema: '{schema}' does not exist (e.g. ../shared/reference/meta_schema_20240725.json)"
        )
    schema_content = json.loads(schema_path.read_text())
    if release is not None:
        problems, warnings = verify_release(release, schema_content)
        print(f"{release}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for line in [*(f"  - {p}" for p in problems), *(f"  ~ {w}" for w in warnings)]:
            print(line)
        if problems:
            sys.exit(1)
        return
    names = bundles or sorted(p.name for p in Path(bundles_dir).iterdir() if (p / "configs").is_dir())
    failed = False
    for name in names:
        problems = verify_bundle(Path(bundles_dir) / name, schema_content)
        print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
        failed = failed or bool(problems)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
