"""Check every bundle against the project's bundle contract.

For each ``bundles/<name>/``: the required files exist; ``configs/metadata.json`` is valid against a model-zoo schema
and has a changelog entry for its version; ``large_files.yml`` entries are complete; the contract's config keys are
present in the training and inference configs (overlays applied); and every network definition (``network_def`` and
any ``*_network_def``) of every config and overlay combination instantiates.

Usage::

    python -m tools.verify_bundles --schema ../shared/reference/meta_schema_20240725.json
    python -m tools.verify_bundles semantic_mri --schema ../shared/reference/meta_schema_20240725.json

Prints one line per problem and exits with status 1 if there is any.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import fire
import jsonschema
import yaml
from monai.bundle import ConfigParser

__all__ = ["REQUIRED_FILES", "TRAIN_KEYS", "INFERENCE_KEYS", "verify_bundle", "main"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED_FILES = (
    "LICENSE",
    "large_files.yml",
    "configs/metadata.json",
    "configs/inference.yaml",
    "configs/evaluate.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "models/.gitkeep",
)
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


def _train_configs(configs: Path) -> list[Path]:
    return sorted(p for p in configs.glob("train*.yaml"))


def _overlays(configs: Path) -> list[Path]:
    """Config files that are not stand-alone workflows (no ``run`` section), multi-GPU overlay excluded."""
    found = []
    for path in sorted(configs.glob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        if "run" not in content and path.name != MULTI_GPU:
            found.append(path)
    return found


def _stage_overlays(configs: Path) -> list[Path]:
    """Overlays that are a later training stage (``train_<stage>.yaml`` without ``run``, e.g. train_diffusion.yaml):
    they apply to the stand-alone training configs only."""
    return [p for p in _overlays(configs) if p.name.startswith("train")]


def _parser(files: list[Path], bundle_root: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(bundle_root)
    return parser


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
        # hash_val may be null (stated explicitly) while the publisher's full digest is not known: the download is
        # then not checked, which is reported as a warning
        missing = [f for f in LARGE_FILE_FIELDS if f not in entry or (f != "hash_val" and not entry.get(f))]
        if missing:
            yield f"large_files.yml entry {i}: missing {missing}"
        elif not entry.get("hash_val"):
            logger.warning(f"{path}: entry {i} ({entry['path']}) has no hash_val: its download is not verified")


def _config_sets(configs: Path) -> list[tuple[str, list[Path]]]:
    """(label, files) for every stand-alone config alone and with each overlay."""
    main = [p for p in sorted(configs.glob("*.yaml")) if p not in _overlays(configs) and p.name != MULTI_GPU]
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


def main(*bundles: str, schema: str, bundles_dir: str = str(REPO_ROOT / "bundles")) -> None:
    """Verify the named bundles (default: all) against the contract; exit 1 on any problem."""
    schema_path = Path(schema)
    if not schema_path.is_file():
        raise FileNotFoundError(
            f"--schema: '{schema}' does not exist (e.g. ../shared/reference/meta_schema_20240725.json)"
        )
    schema_content = json.loads(schema_path.read_text())
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
