"""Where a bundle is: the folder of the configs that were loaded, whoever loaded them.

A bundle's configs say ``bundle_root: "$common.bundle.loaded_bundle_root()"``. The answer is the parent of the
``configs/`` folder of the first config file given to MONAI (``--config_file``), exactly as MONAI's
``ConfigWorkflow.run()`` computes the folder it puts on ``sys.path``: from the repository root
(``bundles/<b>/configs/inference.yaml``), from inside a copied or renamed bundle folder (``configs/inference.yaml``)
or from anywhere with an absolute path. It is never looked up by name, so a copy of a bundle can never read or write
the files of another copy (or of the checkout this package came from). ``--bundle_root`` still overrides it.

MONAI does not hand the config file's path to the expressions it evaluates, so the loading workflow is found from
the expression's own call: a ``ConfigWorkflow`` on the call stack (``monai.bundle run``, ``create_workflow``,
``ConfigWorkflow(...).initialize()``), or else the workflow that owns the ``ConfigParser`` evaluating the expression
(``workflow.parser.get_parsed_content(...)``). A bare ``ConfigParser`` knows no file: :func:`bundle_config_parser`
reads configs and sets ``bundle_root`` the same way, for tools.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser, ConfigWorkflow

__all__ = ["bundle_config_parser", "bundle_root_of", "loaded_bundle_root"]

logger = logging.getLogger(__name__)


def _root_of_folder(folder: Path) -> str:
    """MONAI's rule: the parent of a ``configs/`` folder, else the folder itself. The folder's own name is read from
    its absolute path (``inference.yaml`` given from inside ``configs/`` has the relative parent ``.``), and a
    relative folder gives a relative answer."""
    if folder.absolute().name != "configs":
        return str(folder)
    return str(folder / "..") if folder in (Path("."), Path("")) else str(folder.parent)


def bundle_root_of(config_file: str | Path | Sequence[str | Path]) -> str:
    """The bundle folder of ``config_file`` (the first file of a list): the parent of its folder when that folder is
    ``configs/``, else the folder itself (MONAI's rule). Relative paths stay relative to the current directory."""
    first = config_file if isinstance(config_file, (str, Path)) else next(iter(config_file), None)
    if first is None:
        raise ValueError("config_file: expected a config file or a non-empty list of them, got an empty list")
    return _root_of_folder(Path(first).parent)


def _owner_of(parser: ConfigParser) -> ConfigWorkflow | None:
    """The ``ConfigWorkflow`` whose ``parser`` is ``parser`` (found through the objects that refer to it)."""
    for holder in gc.get_referrers(parser):
        if isinstance(holder, ConfigWorkflow) and holder.parser is parser:  # attributes stored inline (3.11+)
            return holder
        if isinstance(holder, dict) and holder.get("parser") is parser:
            for workflow in gc.get_referrers(holder):
                if isinstance(workflow, ConfigWorkflow) and workflow.__dict__ is holder:
                    return workflow
    return None


def _loading_workflow() -> ConfigWorkflow | None:
    """The workflow that owns the innermost ``ConfigParser`` evaluating on the call stack (so a workflow that, inside
    its own run, evaluates another workflow's parser gets the other one's answer)."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return _owner_of(owner)
        if isinstance(owner, ConfigWorkflow):  # a workflow method evaluating its own parser's expressions
            return owner
        frame = frame.f_back
    return None


def _warn_if_common_is_not_vendored(root: str) -> None:
    """A bundle that carries its own ``common`` package should run with it (see tools/release.py)."""
    vendored = Path(root, "common", "__init__.py")
    loaded = Path(__file__).resolve().parent / "__init__.py"
    if vendored.is_file() and vendored.resolve() != loaded:
        logger.warning(
            "bundle '%s' carries its own 'common' package, but '%s' was imported: run from inside the bundle folder "
            "or put it first on PYTHONPATH",
            root,
            loaded.parent,
        )


def loaded_bundle_root() -> str:
    """The folder of the bundle whose configs are being evaluated (see the module docstring).

    Raises:
        RuntimeError: when no ``ConfigWorkflow`` loaded the configs (a bare ``ConfigParser``): pass ``bundle_root``.
    """
    workflow = _loading_workflow()
    if workflow is None:
        raise RuntimeError(
            "config key 'bundle_root': cannot tell which config files were loaded (no monai.bundle ConfigWorkflow "
            "evaluates this config); run it with 'python -m monai.bundle run --config_file ...', or set "
            "'bundle_root' yourself (--bundle_root <folder>, or common.bundle.bundle_config_parser for a parser)"
        )
    root = _root_of_folder(Path(workflow.config_root_path))
    _warn_if_common_is_not_vendored(root)
    return root


def bundle_config_parser(config_file: str | Path | Sequence[str | Path], **overrides: object) -> ConfigParser:
    """A ``ConfigParser`` holding ``config_file`` (one file or a list, merged in order), with ``bundle_root`` set to
    :func:`bundle_root_of` the first file and then ``overrides`` (``{"bundle_root": ...}`` wins)."""
    files = [str(config_file)] if isinstance(config_file, (str, Path)) else [str(f) for f in config_file]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"config_file: {missing} not found (expected bundle config files)")
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = bundle_root_of(files)
    parser.update(dict(overrides))
    return parser
