"""Reproducible train / validation / test splits of cases (by case or by patient)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["split_cases", "split_by_patient"]


def split_cases(cases: list[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split cases into (train, val) reproducibly: a seeded shuffle of the case ids, ``val_fraction`` to validation.

    At least one validation case is kept when ``val_fraction > 0`` and there are two or more cases.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(cases, key=lambda c: c["case_id"])
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        n_val = max(n_val, 1)
    return order[n_val:], order[:n_val]


SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------------- splitting


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Patients per split: largest remainders; with >= 3 patients every non-zero fraction gets one at least."""
    exact = [f * n for f in fractions]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(fractions):
        for i, fraction in enumerate(fractions):
            if fraction > 0 and counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] = 1
    return counts


def _patient_id(case_id: str, pattern: re.Pattern | None) -> str:
    if pattern is None:
        return case_id
    match = pattern.search(case_id)
    if match is None:
        raise ValueError(
            f"patient_pattern '{pattern.pattern}' does not match case id '{case_id}'; its first group must give "
            "the patient id of every case"
        )
    return match.group(1)


def split_by_patient(
    cases: Sequence[Mapping[str, Any]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    patient_pattern: str | None = None,
) -> dict[str, list[Mapping[str, Any]]]:
    """Split cases into train / val / test by patient (paper: 80:10:10), reproducibly.

    The patient ids are shuffled with ``seed`` (independently of the input order) and cut by ``fractions``; all
    cases of a patient go to one split.

    Args:
        cases: cases with a ``case_id``.
        fractions: shares of the patients for (train, val, test): 3 non-negative numbers summing to 1.
        seed: seed of the shuffle.
        patient_pattern: regular expression whose first group, searched in the case id, is the patient id (e.g.
            ``r"^(.+)_scan\\d+$"``); None: every case is its own patient.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, cases sorted by case id within each split.

    Raises:
        ValueError: bad fractions, a pattern without a group, a case id the pattern does not match.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be 3 non-negative numbers (train, val, test) summing to 1, got {fractions}")
    pattern = re.compile(patient_pattern) if patient_pattern is not None else None
    if pattern is not None and pattern.groups < 1:
        raise ValueError(f"patient_pattern must have a group giving the patient id, got '{patient_pattern}'")
    by_patient: dict[str, list[Mapping[str, Any]]] = {}
    for case in sorted(cases, key=lambda c: c["case_id"]):
        by_patient.setdefault(_patient_id(case["case_id"], pattern), []).append(case)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    splits, first = {}, 0
    for name, count in zip(SPLITS, _split_counts(len(patients), fractions)):
        chosen = patients[first : first + count]
        splits[name] = sorted((c for p in chosen for c in by_patient[p]), key=lambda c: c["case_id"])
        first += count
    return splits
