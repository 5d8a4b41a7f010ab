"""Helpers the bundle configs use to find their own folder and to fail early on bad settings."""

from __future__ import annotations

from pathlib import Path

__all__ = ["locate_bundle_root", "require_file"]


_REPO_ROOT = Path(__file__).resolve().parent.parent


def locate_bundle_root(name: str) -> str:
    """Return the folder of bundle ``name`` (the parent of its ``configs/``).

    The contract runs every command from the repository root, but users also run a bundle from inside its own
    folder (model-zoo habit) or from anywhere with the project installed in editable mode. Looked up in order:
    ``./bundles/<name>``, the current directory when it is the bundle itself, and the checkout that holds this
    package. Override with ``--bundle_root`` to point anywhere else.

    Raises:
        FileNotFoundError: when none of these holds ``configs/`` of bundle ``name``.
    """
    cwd = Path.cwd()
    candidates = [cwd / "bundles" / name, cwd, _REPO_ROOT / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / "configs").is_dir():
            return str(candidate.relative_to(cwd)) if candidate.is_relative_to(cwd) else str(candidate)
    raise FileNotFoundError(
        f"cannot find bundle '{name}': looked for a 'configs' folder in {[str(c) for c in candidates]}; "
        "run from the repository root or pass --bundle_root <path to the bundle>"
    )


def require_file(path: str, config_key: str, hint: str = "") -> str:
    """Return ``path`` if it is an existing file, else raise a ``FileNotFoundError`` naming the config key.

    Used in configs where a file (checkpoint, weights) must exist before any heavy work starts.
    """
    if not Path(path).is_file():
        message = f"config key '{config_key}': file '{path}' does not exist"
        raise FileNotFoundError(f"{message}. {hint}".strip() if hint else message)
    return path
