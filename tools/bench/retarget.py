"""Add (or refresh) the ``targets`` list of a committed benchmark result from its committed figures, without a rerun.

Usage::

    python -m tools.bench.retarget semantic_mri      # also paired_petct, latent_ct

The bundle contract asks every ``benchmarks/results/<name>.json`` for a top-level ``targets`` list computed by the
bench from the measured figures. Benches whose committed results predate that list compute it with their own targets
function (the one each new run calls), so the figures are deterministic per run and need no rerun: this tool reads
``<name>.json``, sets ``targets`` to that function's output and writes the JSON back atomically (every other key and
its formatting unchanged), then appends the bench's target table to ``<name>.md`` (or replaces the one already there)
with a line saying when and how the list was computed.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

from common.io import atomic_write_text, read_json_object
from tools.bench.harness import RESULTS_DIR, TARGETS_HEADING, targets_markdown
from tools.bench.latent_ct import latent_ct_not_measured, latent_ct_targets
from tools.bench.paired_petct import paired_petct_targets
from tools.bench.semantic_mri import semantic_mri_targets

__all__ = ["RETARGETABLE", "retarget", "main"]


TargetsFunction = Callable[[dict[str, Any]], list[dict[str, Any]]]
NotMeasuredFunction = Callable[[dict[str, Any]], list[str]]


def _nothing_left_out(results: dict[str, Any]) -> list[str]:
    return []


RETARGETABLE: dict[str, tuple[TargetsFunction, NotMeasuredFunction]] = {
    "semantic_mri": (semantic_mri_targets, _nothing_left_out),
    "paired_petct": (paired_petct_targets, _nothing_left_out),
    "latent_ct": (latent_ct_targets, latent_ct_not_measured),
}


def _without_targets_section(markdown: str, path: Path) -> str:
    """``markdown`` up to its target section (the whole text when it has none), ending in one newline."""
    marker = f"\n{TARGETS_HEADING}\n"
    count = markdown.count(marker)
    if count > 1:
        raise ValueError(f"'{path}': expected at most one '{TARGETS_HEADING}' section, found {count}")
    return markdown[: markdown.index(marker)] if count else markdown


def retarget(name: str, results_dir: str | Path = RESULTS_DIR, date: str | None = None) -> list[dict[str, Any]]:
    """Compute the ``targets`` of ``<results_dir>/<name>.json`` from its figures with the bench's own function, write
    them into the JSON and the target table into ``<name>.md``; returns the list.

    Args:
        name: a bench in :data:`RETARGETABLE`.
        results_dir: the folder holding ``<name>.json`` and ``<name>.md`` (default ``benchmarks/results``).
        date: the date written under the table (default today, UTC, ISO format).

    Raises:
        ValueError: ``name`` has no targets function, the JSON is unreadable or not an object, or the markdown has
            more than one target section.
        FileNotFoundError: ``<name>.md`` does not exist.
    """
    if name not in RETARGETABLE:
        raise ValueError(f"no targets function for benchmark '{name}'; available: {sorted(RETARGETABLE)}")
    targets_of, not_measured_of = RETARGETABLE[name]
    json_path, markdown_path = Path(results_dir) / f"{name}.json", Path(results_dir) / f"{name}.md"
    results = read_json_object(json_path, f"benchmark '{name}'")
    if not markdown_path.is_file():
        raise FileNotFoundError(f"benchmark '{name}': no markdown '{markdown_path}' next to '{json_path}'")
    results["targets"] = targets_of(results)
    date = date or datetime.datetime.now(datetime.UTC).date().isoformat()
    note = (
        f"The target list was computed from the committed figures on {date} without a rerun "
        f"(`python -m tools.bench.retarget {name}`, with the bench's own targets function)."
    )
    head = _without_targets_section(markdown_path.read_text(encoding="utf-8"), markdown_path).rstrip("\n")
    section = targets_markdown(results["targets"], not_measured_of(results))
    atomic_write_text(json_path, json.dumps(results, indent=2, default=str), overwrite=True)
    atomic_write_text(markdown_path, f"{head}\n\n{section}\n\n{note}\n", overwrite=True)
    return results["targets"]


def main(name: str, results_dir: str | None = None, date: str | None = None) -> None:
    """Retarget ``name`` (see :func:`retarget`) and print its target table."""
    targets = retarget(name, results_dir or RESULTS_DIR, date)
    print(targets_markdown(targets))


if __name__ == "__main__":
    fire.Fire(main)
