"""The benchmark harness: bundle config files and workflows, an iteration clock, tables, target lists, standard
errors."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Events
from monai.bundle import ConfigWorkflow

__all__ = ["TARGETS_HEADING", "mean_standard_error", "target_entry", "targets_markdown"]


REPO_ROOT = Path(__file__).resolve().parents[2]  # tools/bench/harness.py -> the repository root


RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


TARGETS_HEADING = "## Targets"


def config_files(bundle: str, *names: str) -> list[str]:
    return [str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.yaml") for name in names]


def bundle_workflow(config_files: list[str], workflow_type: str | None, **overrides: Any) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=config_files, workflow_type=workflow_type, logging_file=False, **overrides)
    workflow.initialize()
    return workflow


class IterationClock:
    """Intervals between consecutive iterations inside an epoch (epoch boundaries, which hold validation and
    checkpointing, and the first iteration of each epoch are left out)."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._last: float | None = None

    def epoch_started(self) -> None:
        self._last = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.intervals.append(now - self._last)
        self._last = now


def loop_intervals(loader: Iterable[Any], step: Callable[[Any], None], iterations: int) -> list[float]:
    """Intervals of a bare training loop: ``step(batch)`` over ``loader``, epoch after epoch, until ``iterations``
    steps ran (the reference a bundle's trainer is compared with; clocked as :func:`bundle_intervals` is)."""
    clock, done = IterationClock(), 0
    while done < iterations:
        clock.epoch_started()
        for batch in loader:
            step(batch)
            clock.tick()
            done += 1
            if done >= iterations:
                break
    return clock.intervals


def bundle_intervals(trainer: Any, epochs: int) -> list[float]:
    """Intervals between iterations of ``epochs`` epochs of a bundle's trainer (an ignite engine)."""
    clock = IterationClock()
    handles = [
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: clock.epoch_started()),
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: clock.tick()),
    ]
    trainer.state.max_epochs = epochs
    trainer.run()
    for handle in handles:
        handle.remove()
    return clock.intervals


def markdown_table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def target_entry(name: str, value: float, target: str, met: bool) -> dict[str, Any]:
    """One entry of a result's ``targets`` list (bundle contract, "Benchmarks"): ``name`` says what is measured and
    by which rule, ``value`` is the measured figure, ``target`` the issue's bound as text, ``met`` the verdict."""
    return {"name": name, "value": float(value), "target": target, "met": bool(met)}


def targets_markdown(targets: Sequence[dict[str, Any]], not_measured: Sequence[str] = ()) -> str:
    """The ``## Targets`` section of a benchmark's markdown: a table of ``targets`` (entries of
    :func:`target_entry`), then a list of the issue's targets that the run did not measure (``not_measured``, one
    sentence each: the target, "not measured by ...", and where it is measured, if anywhere)."""
    table = markdown_table(
        [[t["name"], f"{t['value']:.3f}", t["target"], "yes" if t["met"] else "no"] for t in targets],
        ["target", "value", "wanted", "met"],
    )
    lines = [f"- {text}" for text in not_measured]
    return "\n\n".join([TARGETS_HEADING, table, *(["\n".join(lines)] if lines else [])])


def mean_standard_error(metrics: dict[str, Any], num_triples: int) -> tuple[int, float]:
    """(triples scored, standard error of the mean pairing Dice) from ``pairing_metrics`` of ``num_triples`` triples.

    Triples whose mask and hot spot are both empty carry no pairing Dice and are not counted; the standard error is
    the sample standard deviation over sqrt(count), NaN under two scored triples.
    """
    scored = num_triples - int(metrics["pairing_both_empty"])
    if scored < 2:
        return scored, float("nan")
    return scored, float(metrics["pairing_dice_std"]) / math.sqrt(scored)
