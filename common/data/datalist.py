"""The one reader (and writer) of decathlon-style datalists (``dataset.json``) that every case finder uses.

Loading and path resolution are MONAI's :func:`monai.data.load_decathlon_datalist` (``image`` and ``label`` are
joined to the datalist's folder). Before MONAI sees the file, :func:`read_datalist` checks it so that a bad datalist
fails with the file, the entry (``training[3]``) and the key named: a missing file, unreadable JSON, an unknown or
non-list section, an entry that is not an object or lacks a required key, a path value of the wrong type, and,
when asked, listed files that do not exist.

MONAI joins other keys only when the joined path exists (and leaves nested mappings alone), so a missing ``pet``
file would keep its relative name and a ``case_id`` that happens to name a folder would become a path. Keys named in
``path_keys`` are therefore joined the way MONAI joins ``image``/``label``, and every other key keeps its value from
the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from common.io import atomic_write_text, read_json_object

__all__ = ["DECATHLON_PATH_KEYS", "EntryCheck", "datalist_content", "read_datalist", "save_datalist"]


DECATHLON_PATH_KEYS = ("image", "label")
"""Keys MONAI always resolves against the datalist's folder (``load_decathlon_datalist(is_segmentation=True)``)."""


EntryCheck = Callable[[Mapping[str, Any], str], None]
"""``check(entry, where)``: raises ``ValueError`` (its message starting with ``where``) for an entry it rejects."""


def datalist_content(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level JSON object of the datalist ``path`` (sections and fields such as ``modality``), unresolved.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not readable JSON, or its top level is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist '{path}' does not exist")
    return read_json_object(path, "datalist")


def _is_path_value(value: Any) -> bool:
    """A path, a list of paths or a ``{name: path}`` mapping: the shapes a path key may have."""
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    if isinstance(value, dict):
        return all(isinstance(v, str) for v in value.values())
    return False


def _join(folder: str, value: Any) -> Any:
    """Join a path value to ``folder`` as MONAI joins ``image``/``label`` (``normpath(join(folder, path))``)."""
    if isinstance(value, str):
        return os.path.normpath(os.path.join(folder, value))
    if isinstance(value, list):
        return [_join(folder, v) for v in value]
    return {str(name): _join(folder, v) for name, v in value.items()}


def _listed_files(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """(``key``, ``key[1]`` or ``key['name']``; path) of every path in a resolved path value."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, list):
        yield from ((f"{key}[{i}]", v) for i, v in enumerate(value))
    else:
        yield from ((f"{key}['{name}']", v) for name, v in value.items())


def _check_entry(
    entry: Any, where: str, keys: Sequence[str], path_keys: Sequence[str], expected: str, check: EntryCheck | None
) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected {expected}, found {entry!r}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where}: expected {expected}; missing key(s) {missing}, found {entry}")
    for key in path_keys:
        if key in entry and not _is_path_value(entry[key]):
            raise ValueError(
                f"{where}: key '{key}' must be a path, a list of paths or a {{name: path}} mapping, "
                f"found {entry[key]!r}"
            )
    if check is not None:
        check(entry, where)


def _require_files(case: Mapping[str, Any], where: str, path_keys: Sequence[str], folder: str) -> None:
    listed = [item for key in path_keys if key in case for item in _listed_files(key, case[key])]
    missing = [f"{name} '{path}'" for name, path in listed if not Path(path).is_file()]
    if missing:
        named = f" (case '{case['case_id']}')" if "case_id" in case else ""
        raise FileNotFoundError(
            f"{where}{named}: {len(missing)} listed file(s) do not exist (paths are relative to '{folder}'): "
            f"{', '.join(missing[:10])}"
        )


def read_datalist(
    path: str | os.PathLike,
    keys: Sequence[str] = DECATHLON_PATH_KEYS,
    section: str = "training",
    *,
    path_keys: Sequence[str] | None = None,
    check_files: bool = False,
    expected: str | None = None,
    check_entry: EntryCheck | None = None,
) -> list[dict[str, Any]]:
    """Read one section of a decathlon datalist with MONAI, paths resolved against the datalist's folder.

    Args:
        path: the datalist file (``dataset.json``).
        keys: keys every entry must have.
        section: the list to read (``training``, ``validation``, ``test``, ...).
        path_keys: keys holding paths (a path, a list of paths or a ``{name: path}`` mapping), joined to the
            datalist's folder; ``image`` and ``label`` always are (decathlon convention). Default: ``keys``.
        check_files: require every listed path to be an existing file.
        expected: how an entry should look, for error messages (default: the required keys).
        check_entry: a further check of each raw entry, ``check_entry(entry, where)`` with ``where`` naming the
            datalist and the entry; runs after the key checks and before the file check.

    Returns:
        The entries in file order, as new dicts: path keys resolved (``os.path.normpath`` of the joined path, as
        MONAI does), every other key as in the file. An empty section gives ``[]``.

    Raises:
        FileNotFoundError: the datalist does not exist; with ``check_files``, a listed file does not exist (the
            entry, the key and the path are named).
        ValueError: unreadable JSON, unknown section (the sections found are listed), a section that is not a
            list, an entry that is not an object, lacks a key of ``keys`` or has a path key of the wrong type.
    """
    path = Path(path)
    content = datalist_content(path)
    if section not in content:
        sections = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(f"datalist '{path}' has no section '{section}'; its sections are {sections}")
    raw = content[section]
    if not isinstance(raw, list):
        raise ValueError(
            f"datalist '{path}': expected a list of cases under '{section}', found {type(raw).__name__}"
            + (f" with keys {sorted(raw)}" if isinstance(raw, dict) else "")
        )
    keys = list(keys)
    path_keys = list(dict.fromkeys([*(keys if path_keys is None else path_keys), *DECATHLON_PATH_KEYS]))
    expected = expected or f"an object with keys {keys}"
    for index, entry in enumerate(raw):
        _check_entry(entry, f"datalist '{path}' {section}[{index}]", keys, path_keys, expected, check_entry)
    if not raw:
        return []  # MONAI indexes the first entry of a 'test' section
    resolved = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section)
    folder = str(path.parent)
    cases = []
    for index, (entry, loaded) in enumerate(zip(raw, resolved)):
        case = {
            key: loaded[key] if key in DECATHLON_PATH_KEYS else _join(folder, value) if key in path_keys else value
            for key, value in entry.items()
        }
        if check_files:
            _require_files(case, f"datalist '{path}' {section}[{index}]", path_keys, folder)
        cases.append(case)
    return cases


def save_datalist(
    path: str | os.PathLike, entries: Sequence[Mapping[str, Any]], merge: bool = False, **fields: Any
) -> Path:
    """Write a decathlon datalist ``{**fields, "numTraining", "training": entries}`` to ``path`` atomically.

    Args:
        path: the datalist file; replaced if it exists.
        entries: the ``training`` entries, paths relative to the datalist's folder.
        merge: keep the ``training`` entries of an existing ``path`` whose ``case_id`` ``entries`` do not repeat,
            before ``entries`` (a second sampling run into one folder lists both runs).
        fields: top-level fields (``name``, ``description``, ``modality``, ...), written first.

    Raises:
        ValueError: with ``merge``, an existing ``path`` that is not a readable datalist.
    """
    path = Path(path)
    previous: Any = []
    if merge and path.is_file():
        previous = datalist_content(path).get("training", [])
        if not isinstance(previous, list) or not all(isinstance(e, dict) for e in previous):
            raise ValueError(
                f"datalist '{path}': cannot add entries to it: expected a list of objects under 'training', found "
                f"{type(previous).__name__}"
            )
    known = {entry.get("case_id") for entry in entries}
    kept = [e for e in previous if e.get("case_id") not in known]
    training = [*kept, *(dict(e) for e in entries)]
    content = {**fields, "numTraining": len(training), "training": training}
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n", overwrite=True)
