"""The downstream-utility experiment: does a bundle's synthetic data help a segmentation network?

Med-DDPM (paper 001, Table II) trains a 3D U-Net on real cases, on synthetic cases and on both, and scores tumour
Dice on real test cases; paper 000 compares such arms with an ANOVA and Bonferroni-corrected t-tests. This workflow
does that for any bundle, with the same network, training budget (optimiser steps) and augmentation in every arm::

    run()
      check_held_out()                     test cases vs generator / seeding / training cases -> ValueError (ids)
      real items: a scarce subset (real_count cases, fixed for every arm and seed), all training cases, the test set
      synthetic items: the bundle's own sampler writes image + mask pairs to synthetic/ (resumes), the first N in
                                           round-robin order
      for each arm x seed                  train a fresh segmenter, score every test case (Dice, IoU, precision,
                                           recall), cache runs/<arm>__seed<s>.json (a rerun resumes)
      report.json, report.md, utility_dice.png
                                           mean +- 95 % CI over test cases (seed-averaged per case), paired t-tests
                                           against 'real' and 'real+aug' (Bonferroni), one-way ANOVA, sanity ratio

Arms: ``real`` (scarce real cases), ``real+aug`` (with the augmentation), ``synN`` (N synthetic pairs only),
``real+synN``, ``real+synN+aug`` for each N in ``synthetic_multiples`` x ``real_count``; and two sanity arms that
check the harness: ``real_all`` (every training case) and ``ceiling`` (trained on the test cases themselves: what
this network and budget reach on those images), whose ratio should be close to 1 on phantoms.

The classification task (:class:`ClassificationUtility`, paper 003's experiment) is the same loop with another
scoring step: an image-level classifier, a stratified scarce set (a share of positives), arms ``real`` and
``real+synN``, AUC and F1 with bootstrap intervals and paired permutation tests against ``real``
(:mod:`common.metrics.classification`), optionally on a second, domain-shifted test set.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose, Randomizable
from monai.utils import convert_to_tensor, set_determinism
from torch import nn

from common.checkpoint import atomic_torch_save, plain_state_dict
from common.data.headers import check_case_headers
from common.data.layouts import find_cases
from common.data.prepare import ensure_phantom_dataset
from common.io import atomic_write_text, read_nifti, write_png
from common.metrics.classification import classification_score, compare_arms, metric_with_ci, tune_threshold
from common.metrics.report import write_report
from common.metrics.segmentation import OVERLAP_METRICS, overlap_counts, overlap_metrics
from common.metrics.statistics import bonferroni, mean_ci, one_way_anova, paired_t_test, ratio_of_means_ci
from common.workflows.base import EvaluationWorkflow, SamplingWorkflow
from common.workflows.evaluation import mask_id_of_sample
from common.workflows.paired_sampling import to_unit_range

__all__ = [
    "BASELINES",
    "ClassificationUtility",
    "UtilityArm",
    "UtilityExperiment",
    "case_label",
    "check_held_out",
    "classification_items",
    "describe_module",
    "describe_transform",
    "paired_sample_items",
    "paired_slice_items",
    "require_test_dir",
    "round_robin",
    "segmentation_inputs",
    "segmentation_items",
    "stratified_draw",
    "utility_arms",
    "utility_test_cases",
    "validation_split",
]

logger = logging.getLogger(__name__)

BASELINES = ("real", "real+aug")
"""The arms every other arm is compared with."""


@dataclass(frozen=True)
class UtilityArm:
    """One training set of the experiment.

    Attributes:
        name: short name in the tables (``real+syn16+aug``).
        real: which real cases: ``scarce`` (the ``real_count`` subset), ``all`` (every training case), ``test`` (the
            test cases: the ceiling) or ``none``.
        synthetic: synthetic image + mask pairs added.
        augment: whether the augmentation transform is applied to the training items.
    """

    name: str
    real: str
    synthetic: int = 0
    augment: bool = False

    @property
    def sanity(self) -> bool:
        """A harness check (all real cases, the ceiling), not one of the compared arms."""
        return self.real in ("all", "test")


def utility_arms(
    real_count: int,
    synthetic_multiples: Sequence[int],
    sanity: bool = True,
    synthetic_per_case: int = 1,
    augmented: bool = True,
    synthetic_only: bool = True,
) -> list[UtilityArm]:
    """The arms of the experiment: real, real+aug, then synN, real+synN, real+synN+aug for N = multiple x
    ``real_count`` x ``synthetic_per_case`` (synthetic items worth one real case: 1 for volumes, the typical
    number of tumour slices of a case for 2D samples), then (``sanity``) real_all and ceiling. Without
    ``augmented`` the ``+aug`` arms are left out, without ``synthetic_only`` the ``synN`` arms (e.g. paper 003's
    design: real vs real + k synthetic)."""
    if real_count < 1:
        raise ValueError(f"config key 'real_count': expected >= 1 scarce real case, got {real_count}")
    if any(int(m) < 1 for m in synthetic_multiples):
        raise ValueError(f"config key 'synthetic_multiples': expected integers >= 1, got {list(synthetic_multiples)}")
    if synthetic_per_case < 1:
        raise ValueError(f"config key 'synthetic_per_case': expected >= 1, got {synthetic_per_case}")
    arms = [UtilityArm("real", "scarce")] + ([UtilityArm("real+aug", "scarce", augment=True)] if augmented else [])
    for multiple in synthetic_multiples:
        n = int(multiple) * int(real_count) * int(synthetic_per_case)
        arms += [UtilityArm(f"syn{n}", "none", n)] if synthetic_only else []
        arms += [UtilityArm(f"real+syn{n}", "scarce", n)]
        arms += [UtilityArm(f"real+syn{n}+aug", "scarce", n, augment=True)] if augmented else []
    if sanity:
        arms += [UtilityArm("real_all", "all"), UtilityArm("ceiling", "test")]
    return arms


def _ids(cases: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(c["case_id"]) for c in cases}


def _files(case: Mapping[str, Any]) -> set[str]:
    """The resolved paths of a case's image and label files (any nesting of strings, lists and dicts). Strings that
    name no file (no folder and no extension: a view "CC", a lesion type "none") are metadata, not paths."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            path = Path(value)
            if path.suffix or len(path.parts) > 1:
                found.add(str(path.resolve()))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    for key, value in case.items():
        if key != "case_id":
            walk(value)
    return found


def check_held_out(test_cases: Sequence[Mapping[str, Any]], **others: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a test set that shares a case (by case id or by file) with any of ``others`` (e.g. the generator's
    training cases, the seeding cases, the segmenter's training cases).

    Raises:
        ValueError: naming the role (``others`` key) and the shared case ids; an empty test set.
    """
    if not test_cases:
        raise ValueError("config key 'test_cases': the held-out test set is empty")
    test_ids = _ids(test_cases)
    test_files = {f: str(c["case_id"]) for c in test_cases for f in _files(c)}
    for role, cases in others.items():
        shared = test_ids & _ids(cases)
        shared |= {test_files[f] for c in cases for f in _files(c) if f in test_files}
        if shared:
            raise ValueError(
                f"the test set is not held out: case(s) {sorted(shared)} are also {role.replace('_', ' ')}; the "
                "test cases must be cases neither the generator's training nor the seeding ever saw"
            )


def require_test_dir(test_dir: str | None) -> str:
    """``test_dir``, or an error saying that real data needs a held-out folder (None: no phantom default)."""
    if test_dir is None:
        raise ValueError(
            "config key 'test_dir': with your own dataset_dir, give a folder of held-out real cases the generator "
            "never saw (--test_dir T); the phantom test set only goes with the phantom training set"
        )
    return test_dir


def utility_test_cases(
    test_dir: str | None,
    modalities: Sequence[str],
    phantom: Mapping[str, Any] | None = None,
    limit: int | None = None,
    layout: str = "auto",
) -> list[dict[str, Any]]:
    """The held-out real test cases of ``test_dir`` (the first ``limit`` by case id; None: all), headers checked.

    ``phantom``: the phantom test set's settings (``{"dir", "kind", "n", "first", ...}``): when ``test_dir`` is its
    missing or empty folder, those phantoms are written first.

    Raises:
        ValueError: ``test_dir`` is None (real data without a held-out folder); see also :func:`find_cases`.
    """
    ensure_phantom_dataset(require_test_dir(test_dir), dict(phantom) if phantom else None)
    cases = sorted(find_cases(test_dir, modalities, layout, config_key="test_dir"), key=lambda c: str(c["case_id"]))
    for case in cases:
        check_case_headers(case)
    return cases[: int(limit)] if limit else cases


def round_robin(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Samples ordered sample 0 of every mask, then sample 1 of every mask, ...: any first N are spread over the
    masks (samples are grouped by :func:`common.workflows.mask_id_of_sample` of their case id)."""
    rank: dict[str, int] = {}
    keyed = []
    for entry in sorted(entries, key=lambda e: str(e["case_id"])):
        group = mask_id_of_sample(str(entry["case_id"]))
        keyed.append((rank.get(group, 0), group, entry))
        rank[group] = rank.get(group, 0) + 1
    return [entry for *_, entry in sorted(keyed, key=lambda k: (k[0], k[1]))]


def segmentation_inputs(
    cases: Sequence[Mapping[str, Any]], annotation_key: str = "label"
) -> Sequence[Mapping[str, Any]]:
    """``cases``, checked to name their annotation (``annotation_key``: a mask file, or a dict of structure masks).

    Raises:
        ValueError: a case without one, named (e.g. a sampler that writes images only).
    """
    for case in cases:
        if not case.get(annotation_key):
            raise ValueError(
                f"case '{case.get('case_id')}' has no '{annotation_key}' (mask): the utility experiment trains a "
                "segmenter "
                "and needs an annotation for every real and synthetic case (a sampler that writes images only "
                "cannot feed the synthetic arms: set synthetic_multiples to [])"
            )
    return cases


def segmentation_items(
    cases: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], Mapping[str, Any]],
    target_labels: Sequence[int],
    annotation_key: str = "label",
) -> list[dict[str, Any]]:
    """Cases as in-memory training / test items ``{"image": (C, *spatial) float32, "label": (1, *spatial) {0, 1},
    "case_id"}``: ``transform`` loads a case (``{"image", "label"}`` on the model grid and scale) and the label's
    ``target_labels`` become the foreground; every case must have ``annotation_key`` (its mask file or files)."""
    targets = torch.tensor([int(v) for v in target_labels])
    items = []
    for case in segmentation_inputs(cases, annotation_key):
        data = transform(dict(case))
        label = convert_to_tensor(data["label"], track_meta=False)
        items.append(
            {
                "image": convert_to_tensor(data["image"], dtype=torch.float32, track_meta=False),
                "label": torch.isin(label.round().long(), targets).float(),
                "case_id": str(case["case_id"]),
            }
        )
    return items


def paired_slice_items(dataset: Sequence[Mapping[str, Any]], image_keys: Sequence[str] = ("ct", "pet")) -> list[dict]:
    """2D items of a :class:`common.data.PairedSliceDataset` (tumour slices of real PET-CT cases, in [-1, 1]): the
    image channels ``image_keys`` stacked, the mask (> 0) as label, the case id kept (a case's slices are scored
    together)."""
    items = []
    for index in range(len(dataset)):
        item = dataset[index]
        items.append(
            {
                "image": torch.cat([torch.as_tensor(item[k], dtype=torch.float32) for k in image_keys]),
                "label": (torch.as_tensor(item["mask"]) > 0).float(),
                "case_id": str(item["case_id"]),
            }
        )
    return items


def paired_sample_items(entries: Sequence[Mapping[str, Any]], windows: Sequence[Sequence[float]]) -> list[dict]:
    """2D items of the triples ``paired_petct``'s sampler wrote (``{"case_id", "image": [CT, PET], "label"}``, (H, W,
    1) volumes in HU / SUV / {0, 1}): each image mapped from its window to [-1, 1] as training does."""
    items = []
    for entry in segmentation_inputs(entries):
        images = [to_unit_range(read_nifti(path)[..., 0], window) for path, window in zip(entry["image"], windows)]
        items.append(
            {
                "image": torch.stack(images),
                "label": (read_nifti(entry["label"])[..., 0] > 0).float()[None],
                "case_id": str(entry["case_id"]),
            }
        )
    return items


def describe_transform(transform: Any) -> Any:
    """What a (composed) transform is, the same in every process and after use: class names (nested for ``Compose``)
    and each transform's probability; ``repr`` would hold memory addresses and the attributes hold random draws."""
    if transform is None:
        return None
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [type(transform).__name__, [describe_transform(t) for t in inner]]
    prob = getattr(transform, "prob", None)
    return type(transform).__name__ if prob is None else f"{type(transform).__name__}(prob={prob})"


def describe_callable(factory: Callable) -> Any:
    """A factory (e.g. a config's ``_mode_: callable`` optimizer, a ``functools.partial``) as its name and keyword
    values, the same in every process (``repr`` of a function holds its memory address)."""
    if isinstance(factory, functools.partial):
        return [describe_callable(factory.func), {k: repr(v) for k, v in sorted(factory.keywords.items())}]
    return getattr(factory, "__qualname__", type(factory).__name__)


def _describe_value(value: Any) -> Any:
    """A setting's value as plain JSON, the same in every process (see :func:`describe_module`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return _describe_value(value.value)
    if isinstance(value, (list, tuple)):
        return [_describe_value(v) for v in value]
    if isinstance(value, torch.Tensor):
        if value.numel() <= 64:
            return [round(float(v), 6) for v in value.detach().flatten().cpu()]
        return f"Tensor{list(value.shape)}"
    if isinstance(value, nn.Module):
        return describe_module(value)
    if callable(value):
        return describe_callable(value)
    return type(value).__name__


def describe_module(module: Any) -> Any:
    """A loss (or any module without learnt weights) as its class and every option that changes what it computes, the
    same in every process: its public plain attributes (``include_background``, ``lambda_dice``, ``reduction``, ...),
    its buffers (class weights) and, recursively, its submodules (``DiceCELoss``'s ``dice`` and ``cross_entropy``).
    A plain function is described by :func:`describe_callable`."""
    if not isinstance(module, nn.Module):
        return describe_callable(module)
    options: dict[str, Any] = {
        name: _describe_value(value)
        for name, value in sorted(vars(module).items())
        if not name.startswith("_") and name != "training"
    }
    options.update({name: _describe_value(b) for name, b in module.named_buffers(recurse=False)})
    options.update({name: describe_module(m) for name, m in module.named_children()})
    return [type(module).__name__, options]


def describe_inferer(inferer: Inferer) -> list:
    """What an inferer does to a test image, for the run settings: its class and, for windowed inference, the window,
    overlap and blending mode (Gaussian blending changes every figure)."""
    window = {}
    if hasattr(inferer, "roi_size"):
        window["roi_size"] = [int(v) for v in inferer.roi_size]
    for name in ("overlap", "mode", "sigma_scale"):
        value = getattr(inferer, name, None)
        if value is not None:
            window[name] = _describe_value(value)
    return [type(inferer).__name__, window]


def _plain_number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class UtilityExperiment(EvaluationWorkflow):
    """Train one segmentation network per arm and seed and compare them on held-out real cases (module docstring).

    Args:
        output_dir: where ``runs/``, the reports and the plot go.
        train_cases: real training cases the scarce subset and ``real_all`` come from (``{"case_id", ...}``).
        test_cases: held-out real test cases.
        generator_cases: every case the generator was trained (or validated) on.
        seed_cases: cases the sampler is conditioned or seeded on (their masks or slices), if any.
        real_items: ``cases -> items`` (see :func:`segmentation_items`): loads real cases on the model grid.
        synthetic_items: ``datalist entries -> items``: loads the sampler's written pairs.
        sampling: the bundle's sampling workflow, writing at least the largest N pairs; they go to
            ``output_dir/synthetic`` (sampling resumes there); None when no arm has synthetic data.
        network: ``() -> nn.Module``, a fresh segmenter with 2 output channels (background, target).
        optimizer: ``params -> torch.optim.Optimizer``.
        loss: training loss of (logits, label) with the label as a class index map (e.g. ``DiceCELoss(
            to_onehot_y=True, softmax=True)``).
        augmentation: random transform of an item dict (keys ``image``, ``label``) for the ``+aug`` arms.
        training_sampling: a transform applied to every training item in every arm, before the augmentation: how
            training samples are drawn from an item, e.g. MONAI ``RandCropByPosNegLabeld`` patches around and away
            from the target (small targets; it may return a list of patches); None: whole items.
        inferer: inference on a (1, C, *spatial) test image (default ``SimpleInferer``: the whole image; with patch
            training e.g. a ``SlidingWindowInferer`` of the patch size).
        real_count: scarce real cases; the subset is drawn once with ``subset_seed`` and is the same in every arm.
        synthetic_multiples: N = multiple x ``real_count`` x ``synthetic_per_case`` for the synthetic arms.
        synthetic_per_case: synthetic items worth one real case (1 for volumes; slices per case for 2D samples).
        seeds: training seeds (network initialisation, batch order, augmentation).
        iterations: optimiser steps of every training run (the same budget in every arm).
        batch_size: items per step.
        min_test_cases: fewest test cases for a p-value (below: the report says so).
        sanity: also run ``real_all`` and ``ceiling``.
        augmented_arms: also run the ``+aug`` arms (needs ``augmentation``).
        synthetic_only_arms: also run the ``synN`` arms (synthetic data only).
        held_out_from: more roles the test cases must not share a case with (e.g. ``{"pathology_patches": [...]}``).
        subset_seed: seed of the draw of the scarce subset.
        time_limit_minutes: start no new training run after this long (cached runs still count; every call trains
            one run at least); the next call resumes. None: no limit.
        overwrite: train again runs whose cached result was made with other settings (else an error).
        device: torch device.
        title: report heading.
        feature_network_file: where to keep the weights of the ``real_all`` arm's network of the first seed (a plain
            state dict; a project-trained feature network for the bundle's FID, trained on real training cases
            only), or None. A cached run whose file is missing is trained again (the same seed gives the same
            weights).
    """

    def __init__(
        self,
        output_dir: str,
        train_cases: Sequence[Mapping[str, Any]],
        test_cases: Sequence[Mapping[str, Any]],
        generator_cases: Sequence[Mapping[str, Any]],
        real_items: Callable[[Sequence[Mapping[str, Any]]], Sequence[dict]],
        network: Callable[[], nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: Callable[..., torch.Tensor],
        seed_cases: Sequence[Mapping[str, Any]] = (),
        synthetic_items: Callable[[Sequence[Mapping[str, Any]]], Sequence[dict]] | None = None,
        sampling: SamplingWorkflow | None = None,
        augmentation: Callable[[dict], dict] | None = None,
        inferer: Inferer | None = None,
        training_sampling: Callable[[dict], Any] | None = None,
        real_count: int = 4,
        synthetic_multiples: Sequence[int] = (1, 4, 16),
        synthetic_per_case: int = 1,
        seeds: Sequence[int] = (0, 1, 2),
        iterations: int = 300,
        batch_size: int = 2,
        min_test_cases: int = 5,
        sanity: bool = True,
        augmented_arms: bool = True,
        synthetic_only_arms: bool = True,
        held_out_from: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        subset_seed: int = 0,
        time_limit_minutes: float | None = None,
        overwrite: bool = False,
        device: str | torch.device = "cpu",
        title: str = "Downstream utility of the synthetic data",
        feature_network_file: str | None = None,
    ) -> None:
        super().__init__(output_dir, title)
        if not seeds:
            raise ValueError("config key 'seeds': expected at least one training seed, got none")
        if int(iterations) < 1 or int(batch_size) < 1:
            raise ValueError(f"config keys 'iterations', 'batch_size': expected >= 1, got {iterations}, {batch_size}")
        if int(real_count) > len(train_cases):
            raise ValueError(
                f"config key 'real_count': {real_count} scarce real cases asked for, but only {len(train_cases)} "
                "training case(s) exist"
            )
        if augmented_arms and augmentation is None:
            raise ValueError(
                "config key 'augmentation': the '+aug' arms need an augmentation transform (or augmented_arms false)"
            )
        self.arms = utility_arms(
            int(real_count), synthetic_multiples, sanity, int(synthetic_per_case), augmented_arms, synthetic_only_arms
        )
        if any(arm.synthetic for arm in self.arms) and (sampling is None or synthetic_items is None):
            raise ValueError(
                "config keys 'sampling', 'synthetic_items': synthetic arms (synthetic_multiples "
                f"{list(synthetic_multiples)}) need the bundle's sampler and a loader of its samples"
            )
        self.train_cases = sorted(train_cases, key=lambda c: str(c["case_id"]))
        self.test_cases = sorted(test_cases, key=lambda c: str(c["case_id"]))
        self.scarce_cases = sorted(self.draw_scarce(int(real_count), int(subset_seed)), key=lambda c: str(c["case_id"]))
        self.held_out_from = {
            "generator_training_cases": generator_cases,
            "seeding_cases": seed_cases,
            "segmenter_training_cases": self.train_cases,
            **(held_out_from or {}),
        }
        check_held_out(self.test_cases, **self.held_out_from)
        self.generator_cases = list(generator_cases)
        self.seed_cases = list(seed_cases)
        self.real_items = real_items
        self.synthetic_items = synthetic_items
        self.sampling = sampling
        if sampling is not None:  # the samples belong to this experiment's folder; the harness logs, no progress bars
            sampling.output_dir = self.output_dir / "synthetic"
            sampling.verbose = False
        self.network = network
        self.optimizer = optimizer
        self.loss = loss
        self.augmentation = augmentation
        self.training_sampling = training_sampling
        self.inferer = inferer or SimpleInferer()
        self.real_count = int(real_count)
        self.seeds = [int(s) for s in seeds]
        self.iterations = int(iterations)
        self.batch_size = int(batch_size)
        self.min_test_cases = int(min_test_cases)
        self.time_limit = None if time_limit_minutes is None else float(time_limit_minutes) * 60.0
        self.overwrite = bool(overwrite)
        self.device = torch.device(device)
        self.feature_network_file = None if feature_network_file is None else Path(feature_network_file)
        if self.feature_network_file is not None and not any(arm.name == "real_all" for arm in self.arms):
            raise ValueError(
                "config key 'feature_network_file': the feature network is the 'real_all' arm's, which runs only "
                "with the sanity arms (sanity true)"
            )

    # ------------------------------------------------------------------------------------------------------ data

    def draw_scarce(self, count: int, seed: int) -> list[Mapping[str, Any]]:
        """The scarce real subset: ``count`` training cases drawn at random with ``seed``."""
        return random.Random(seed).sample(self.train_cases, count)

    def scored_items(self, real: Mapping[str, list[dict]]) -> list[dict]:
        """The items every trained network is scored on: the held-out test cases."""
        return real["test"]

    def synthetic_pool(self) -> list[dict]:
        """The first max-N synthetic items (round-robin over the masks); samples the missing ones first."""
        needed = max((arm.synthetic for arm in self.arms), default=0)
        if not needed:
            return []
        entries = round_robin(self.sampling.run())
        if len(entries) < needed:
            raise ValueError(
                f"config key 'num_samples': the sampler wrote {len(entries)} synthetic pair(s) in "
                f"'{self.sampling.output_dir}', the largest synthetic arm needs {needed}"
            )
        return list(self.synthetic_items(entries[:needed]))

    def training_items(self, arm: UtilityArm, real: Mapping[str, list[dict]], synthetic: list[dict]) -> list[dict]:
        return [*real[arm.real], *synthetic[: arm.synthetic]]

    def validation_items(self, arm: UtilityArm, real: Mapping[str, list[dict]], synthetic: list[dict]) -> list[dict]:
        """Items of the arm's training data held out of its training and scored with the test items (e.g. to tune a
        decision threshold); none here."""
        return []

    # -------------------------------------------------------------------------------------------------- one run

    def settings(
        self, arm: UtilityArm, items: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """What defines one run's numbers (a cached result with other settings is not reused)."""
        settings = {
            "arm": asdict(arm),
            "training_cases": sorted(str(i["case_id"]) for i in items),
            "test_cases": sorted(_ids(self.test_cases)),
            "iterations": self.iterations,
            "batch_size": self.batch_size,
            "augmentation": describe_transform(self.augmentation) if arm.augment else None,
            "network": repr(self.network()),
            "optimizer": describe_callable(self.optimizer),
            "loss": describe_module(self.loss),
            "inferer": describe_inferer(self.inferer),
        }
        if self.training_sampling is not None:
            cropper = getattr(self.training_sampling, "cropper", self.training_sampling)
            settings["training_sampling"] = [
                describe_transform(self.training_sampling),
                [int(v) for v in getattr(cropper, "spatial_size", None) or []],
            ]
        if validation:
            settings["validation_cases"] = sorted(str(i["case_id"]) for i in validation)
        return settings

    def network_summary(self) -> str:
        """The segmenter's class and size, for the report (e.g. ``UNet, 1,190,000 parameters``)."""
        network = self.network()
        return f"{type(network).__name__}, {sum(p.numel() for p in network.parameters()):,} parameters"

    def train(self, items: Sequence[dict], augment: bool, seed: int) -> nn.Module:
        """A fresh network trained for ``iterations`` steps on ``items`` (seeded: init, batch order, augmentation)."""
        set_determinism(seed=seed)
        network = self.network().to(self.device)
        steps = [t for t in (self.training_sampling, self.augmentation if augment else None) if t is not None]
        transform = steps[0] if len(steps) == 1 else Compose(steps) if steps else None
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=seed)
        loader = DataLoader(
            Dataset(list(items), transform=transform),
            batch_size=min(self.batch_size, len(items)),
            shuffle=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=1,
            epoch_length=self.iterations,
            train_data_loader=loader,
            network=network,
            optimizer=self.optimizer(network.parameters()),
            loss_function=self.loss,
        )
        trainer.run()
        set_determinism(seed=None)
        return network

    @torch.no_grad()
    def score(self, network: nn.Module, items: Sequence[dict]) -> dict[str, dict[str, float | None]]:
        """Dice, IoU, precision and recall of the target per test case (the items of a case counted together)."""
        network.eval()
        counts: dict[str, torch.Tensor] = {}
        for item in items:
            logits = self.inferer(item["image"][None].to(self.device), network)
            prediction = (torch.as_tensor(logits).argmax(dim=1, keepdim=True) == 1).float().cpu()
            case_counts = overlap_counts(prediction, item["label"][None])[0, 0]
            counts[item["case_id"]] = counts.get(item["case_id"], torch.zeros(4, dtype=torch.float64)) + case_counts
        return {case: {name: _plain_number(v) for name, v in overlap_metrics(c).items()} for case, c in counts.items()}

    def run_path(self, arm: UtilityArm, seed: int) -> Path:
        return self.output_dir / "runs" / f"{arm.name}__seed{seed}.json"

    def cached(self, arm: UtilityArm, seed: int, settings: Mapping[str, Any]) -> dict | None:
        """The cached result of a run made with ``settings``; another run's result is an error (or, with
        ``overwrite``, ignored)."""
        path = self.run_path(arm, seed)
        if not path.is_file():
            return None
        found = json.loads(path.read_text())
        if found.get("settings") == json.loads(json.dumps(settings)):
            return found
        if self.overwrite:
            return None
        differing = sorted(k for k in settings if found.get("settings", {}).get(k) != settings[k])
        raise FileExistsError(
            f"output_dir '{self.output_dir}': '{path.name}' holds a run made with other settings ({differing}); "
            "choose another --output_dir or pass --overwrite true to train it again"
        )

    def run_arm(
        self, arm: UtilityArm, seed: int, items: Sequence[dict], test: Sequence[dict], validation: Sequence[dict] = ()
    ) -> dict:
        """Train on ``items``, score ``test`` (``cases``) and ``validation`` (``validation``, when given); cached."""
        settings = self.settings(arm, items, validation)
        found = self.cached(arm, seed, settings)
        keep = self.feature_network_file is not None and arm.name == "real_all" and seed == self.seeds[0]
        if found is not None and not (keep and not self.feature_network_file.is_file()):
            return found
        start = time.perf_counter()
        network = self.train(items, arm.augment, seed)
        if keep:
            atomic_torch_save(plain_state_dict(network), self.feature_network_file)
            logger.info(f"feature network (arm 'real_all', seed {seed}) written to '{self.feature_network_file}'")
        result = {"settings": settings, "cases": self.score(network, test)}
        if validation:
            result["validation"] = self.score(network, validation)
        result["seconds"] = time.perf_counter() - start
        atomic_write_text(self.run_path(arm, seed), json.dumps(result, indent=1) + "\n", overwrite=True)
        logger.info(
            f"arm '{arm.name}' seed {seed}: {len(items)} training item(s), {self.headline(result['cases'])} "
            f"({result['seconds']:.1f} s)"
        )
        return result

    def headline(self, cases: Mapping[str, Mapping[str, Any]]) -> str:
        """One run's test figure for the log."""
        dice = [c["dice"] for c in cases.values() if c["dice"] is not None]
        return f"test Dice {np.mean(dice) if dice else float('nan'):.3f}"

    # ------------------------------------------------------------------------------------------------- the whole

    def evaluate(self) -> dict[str, Any]:
        """Every arm x seed (cached runs reused); the statistics once all are done, else a progress summary."""
        start = time.perf_counter()
        real = {
            "scarce": list(self.real_items(self.scarce_cases)),
            "all": list(self.real_items(self.train_cases)),
            "test": list(self.real_items(self.test_cases)),
            "none": [],
        }
        synthetic = self.synthetic_pool()
        runs: dict[str, dict[int, dict]] = {}
        pending = [(arm, seed) for seed in self.seeds for arm in self.arms]
        trained = 0
        for number, (arm, seed) in enumerate(pending):
            items = self.training_items(arm, real, synthetic)
            validation = self.validation_items(arm, real, synthetic)
            fresh = self.cached(arm, seed, self.settings(arm, items, validation)) is None
            out_of_time = self.time_limit is not None and time.perf_counter() - start > self.time_limit
            if fresh and trained and out_of_time:
                logger.info(f"time limit reached: {number} of {len(pending)} runs done; run again to resume")
                return {"complete": False, "runs_done": number, "runs_total": len(pending)}
            trained += fresh
            runs.setdefault(arm.name, {})[seed] = self.run_arm(arm, seed, items, self.scored_items(real), validation)
        return self.statistics(runs)

    def statistics(self, runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
        """Per arm: per-case seed means, mean +- 95 % CI of each metric, seed means; paired tests; ANOVA; sanity."""
        arms: dict[str, Any] = {}
        per_case_dice: dict[str, dict[str, float]] = {}
        for arm in self.arms:
            by_seed = runs[arm.name]
            cases = sorted(_ids(self.test_cases))
            per_case = {}
            for case in cases:
                per_case[case] = {}
                for metric in OVERLAP_METRICS:
                    values = [by_seed[s]["cases"].get(case, {}).get(metric) for s in self.seeds]
                    values = [v for v in values if v is not None]
                    per_case[case][metric] = float(np.mean(values)) if values else None
            per_case_dice[arm.name] = {c: v["dice"] for c, v in per_case.items() if v["dice"] is not None}
            seed_means = {
                metric: [
                    _plain_number(
                        np.nanmean([np.nan if v[metric] is None else v[metric] for v in run["cases"].values()])
                    )
                    for run in (by_seed[s] for s in self.seeds)
                ]
                for metric in OVERLAP_METRICS
            }
            arms[arm.name] = {
                "real_cases": {
                    "scarce": self.real_count,
                    "all": len(self.train_cases),
                    "test": len(self.test_cases),
                }.get(arm.real, 0),
                "synthetic": arm.synthetic,
                "augment": arm.augment,
                "sanity": arm.sanity,
                "metrics": {m: mean_ci([v[m] for v in per_case.values() if v[m] is not None]) for m in OVERLAP_METRICS},
                "seed_means": seed_means,
                "seconds": float(sum(by_seed[s]["seconds"] for s in self.seeds)),
                "per_case": per_case,
            }
        compared = [arm.name for arm in self.arms if not arm.sanity]
        baselines = [b for b in BASELINES if b in compared]
        tests = [(arm, base) for base in baselines for arm in compared if arm != base]
        comparisons: dict[str, dict[str, Any]] = {}
        for arm, base in tests:
            result = paired_t_test(per_case_dice[arm], per_case_dice[base], self.min_test_cases)
            result["p_bonferroni"] = bonferroni(result["p"], len(tests))
            comparisons.setdefault(f"vs {base}", {})[arm] = result
        results: dict[str, Any] = {
            "complete": True,
            "settings": {
                "real_count": self.real_count,
                "seeds": self.seeds,
                "iterations": self.iterations,
                "batch_size": self.batch_size,
                "min_test_cases": self.min_test_cases,
                "network": self.network_summary(),
            },
            "cases": {
                "test": sorted(_ids(self.test_cases)),
                "scarce_real": sorted(_ids(self.scarce_cases)),
                "training": sorted(_ids(self.train_cases)),
                "generator": sorted(_ids(self.generator_cases)),
                "seeding": sorted(_ids(self.seed_cases)),
            },
            "arms": arms,
            "comparisons": comparisons,
            "comparisons_count": len(tests),
            "anova": one_way_anova({a: list(per_case_dice[a].values()) for a in compared}, self.min_test_cases),
        }
        if "real_all" in arms and "ceiling" in arms:
            best, top = arms["real_all"]["metrics"]["dice"]["mean"], arms["ceiling"]["metrics"]["dice"]["mean"]
            ratio = best / top if best is not None and top else None
            interval = ratio_of_means_ci(per_case_dice["real_all"], per_case_dice["ceiling"], self.min_test_cases)
            results["sanity"] = {
                "real_all_dice": best,
                "ceiling_dice": top,
                "ratio": ratio,
                "ci_low": interval["ci_low"],  # paired bootstrap over test cases (how far the ratio can move
                "ci_high": interval["ci_high"],  # with another draw of as many test cases)
                "note": interval["note"],
            }
        return results

    # ------------------------------------------------------------------------------------------------ reporting

    def markdown(self, results: Mapping[str, Any]) -> str:
        """The report table: one row per arm, then the ANOVA, the sanity ratio and the notes on missing p-values."""

        def interval(summary: Mapping[str, Any]) -> str:
            if summary["mean"] is None:
                return "-"
            if summary["ci_low"] is None:
                return f"{summary['mean']:.3f}"
            return f"{summary['mean']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"

        def versus(arm: str, base: str) -> str:
            result = results["comparisons"].get(f"vs {base}", {}).get(arm)
            if result is None:
                return "-"
            if result["mean_difference"] is None:
                return "no paired cases"
            text = f"{result['mean_difference']:+.3f}"
            return text + (f", p {result['p_bonferroni']:.3g}" if result["p"] is not None else ", no p (too few cases)")

        header = (
            "| arm | real | synthetic | aug | Dice [95 % CI] | IoU | precision | recall | Dice per seed "
            "| vs real (Bonferroni p) | vs real+aug (Bonferroni p) |"
        )
        rows = [header, "|" + "---|" * 11]
        for name, arm in results["arms"].items():
            m = arm["metrics"]
            seeds = ", ".join("-" if v is None else f"{v:.3f}" for v in arm["seed_means"]["dice"])
            rows.append(
                f"| {name} | {arm['real_cases']} | {arm['synthetic']} | {'yes' if arm['augment'] else 'no'} "
                f"| {interval(m['dice'])} | {interval(m['iou'])} | {interval(m['precision'])} "
                f"| {interval(m['recall'])} | {seeds} | {versus(name, 'real')} | {versus(name, 'real+aug')} |"
            )
        settings = results["settings"]
        lines = [
            f"# {self.title}",
            "",
            f"{len(results['cases']['test'])} held-out real test cases (never seen by the generator's training or "
            f"the seeding); {settings['real_count']} scarce real training cases "
            f"({', '.join(results['cases']['scarce_real'])}); "
            f"seeds {settings['seeds']}; {settings['iterations']} optimiser steps of batch {settings['batch_size']} "
            f"in every arm; network {settings['network']}.",
            "Means over test cases of the seed-averaged per-case score, 95 % t interval over cases; paired t-tests "
            f"over test cases, Bonferroni-corrected for {results['comparisons_count']} comparisons.",
            "",
            *rows,
            "",
        ]
        anova = results["anova"]
        lines.append(
            f"One-way ANOVA of Dice across the {len(anova['groups'])} compared arms: "
            + (
                f"F = {anova['f']:.3f}, p = {anova['p']:.3g}."
                if anova["p"] is not None
                else f"no p-value: {anova['note']}."
            )
        )
        notes = sorted({r["note"] for c in results["comparisons"].values() for r in c.values() if r["note"]})
        lines += [f"Paired tests: {note}." for note in notes]
        if "sanity" in results and results["sanity"]["ratio"] is not None:
            s = results["sanity"]
            if s.get("ci_low") is not None and s.get("ci_high") is not None:
                spread = f" (95 % paired-bootstrap interval over test cases [{s['ci_low']:.3f}, {s['ci_high']:.3f}])"
            else:
                spread = f" (no interval: {s['note']})" if s.get("note") else ""
            lines.append(
                f"Harness sanity: real_all Dice {s['real_all_dice']:.3f} / ceiling Dice {s['ceiling_dice']:.3f} = "
                f"{s['ratio']:.3f}{spread} (ceiling: the same network and budget trained on the test cases themselves)."
            )
        return "\n".join(lines) + "\n"

    plot_metric = "dice"
    """The ``metrics`` entry of an arm the plot shows (``utility_<plot_metric>.png``)."""

    def plot(self, results: Mapping[str, Any]) -> Path:
        """``utility_<plot_metric>.png``: that score per arm (bars, left to right in the report's order) with 95 % CI
        whiskers; grid lines every 0.1; real-only arms grey, synthetic-only blue, mixed green, sanity arms orange."""
        names = list(results["arms"])
        bar, gap, margin, height = 28, 12, 20, 240
        image = np.full((height + 2 * margin, margin * 2 + len(names) * (bar + gap), 3), 255, np.uint8)

        def y(value: float) -> int:
            return margin + round((1.0 - min(max(value, 0.0), 1.0)) * height)

        for tick in np.linspace(0.0, 1.0, 11):
            image[y(tick), margin:-margin] = 220
        for index, name in enumerate(names):
            arm = results["arms"][name]
            dice = arm["metrics"][self.plot_metric]
            if dice["mean"] is None:
                continue
            colour = (
                (230, 140, 40)
                if arm["sanity"]
                else (90, 90, 90)
                if not arm["synthetic"]
                else (60, 110, 200)
                if not arm["real_cases"]
                else (60, 160, 90)
            )
            left = margin + gap // 2 + index * (bar + gap)
            image[y(dice["mean"]) : y(0.0), left : left + bar] = colour
            if dice["ci_low"] is not None:
                middle = left + bar // 2
                image[y(dice["ci_high"]) : y(dice["ci_low"]) + 1, middle - 1 : middle + 1] = 0
                for bound in (dice["ci_low"], dice["ci_high"]):
                    image[y(bound), middle - 5 : middle + 6] = 0
        text = {
            "Title": self.title,
            "Description": f"{self.plot_metric} per arm, left to right: "
            + ", ".join(f"{n} {results['arms'][n]['metrics'][self.plot_metric]['mean'] or 0:.3f}" for n in names)
            + "; whiskers: 95 % CI over test cases; grid every 0.1 from 0 to 1",
        }
        return write_png(self.output_dir / f"utility_{self.plot_metric}.png", image, text=text, overwrite=True)

    def run(self) -> dict[str, Any]:
        """Run (or resume) every arm; once all are done write ``report.json``, ``report.md`` and the plot."""
        results = self.evaluate()
        if not results.get("complete"):
            return results
        json_path, md_path = write_report(results, self.output_dir, title=self.title)
        atomic_write_text(md_path, self.markdown(results), overwrite=True)
        png = self.plot(results)
        logger.info(f"{self.title}: '{json_path}', '{md_path}', '{png}'")
        return results


# ------------------------------------------------------------------------------------------ the classification task


def case_label(case: Mapping[str, Any], label_key: str = "cancer") -> int:
    """A case's image-level class (0/1): its ``provenance`` record's ``label_key`` (a synthetic sample: the flag its
    sampler recorded), else the case's own ``label_key`` (e.g. a ``dataset.json`` entry's ``cancer``).

    Raises:
        ValueError: no such flag, or a value other than 0/1, naming the case (and the record).
    """
    source = f"case '{case.get('case_id')}'"
    record = case.get("provenance")
    if record:
        path = Path(str(record))
        try:
            flags = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: provenance record '{path}' is unreadable ({error})") from error
        source = f"{source}, provenance record '{path}'"
    else:
        flags = case
    value = flags.get(label_key)
    if value is None or str(value) not in ("0", "1", "True", "False"):
        raise ValueError(
            f"{source}: expected a 0/1 '{label_key}' flag (the classifier's label), found {value!r}; real cases "
            f"need it in their dataset.json entries"
        )
    return int(str(value) in ("1", "True"))


def classification_items(
    cases: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], Mapping[str, Any]],
    label_key: str = "cancer",
    lesion_key: str | None = None,
) -> list[dict[str, Any]]:
    """Cases as in-memory items ``{"image": (C, *spatial) float32, "label": () int64 class, "case_id"}``:
    ``transform`` loads a case (``{"image"}`` on the classifier's grid and scale), :func:`case_label` gives the class.

    ``lesion_key``: the transform's lesion mask of a synthetic sample; a sample flagged positive must have one that
    is not empty, a negative one an empty one (the record and the mask written with it must agree).

    Raises:
        ValueError: a flag that disagrees with the sample's lesion mask, naming the case.
    """
    items = []
    for case in cases:
        label = case_label(case, label_key)
        data = transform(dict(case))
        if lesion_key is not None:
            has_lesion = bool((convert_to_tensor(data[lesion_key], track_meta=False) > 0).any())
            if has_lesion != bool(label):
                raise ValueError(
                    f"case '{case.get('case_id')}': its '{label_key}' flag is {label} but its lesion mask "
                    f"'{case.get(lesion_key)}' is {'not ' if has_lesion else ''}empty"
                )
        items.append(
            {
                "image": convert_to_tensor(data["image"], dtype=torch.float32, track_meta=False),
                "label": torch.tensor(label, dtype=torch.int64),
                "case_id": str(case["case_id"]),
            }
        )
    return items


def stratified_draw(
    cases: Sequence[Mapping[str, Any]], count: int, positive_fraction: float, seed: int, label_key: str = "cancer"
) -> list[Mapping[str, Any]]:
    """``count`` cases of which ``round(count * positive_fraction)`` are positive (:func:`case_label`), drawn at
    random with ``seed``.

    Raises:
        ValueError: too few positive or negative cases for the draw (names the counts and the config keys).
    """
    positives = [c for c in cases if case_label(c, label_key)]
    negatives = [c for c in cases if not case_label(c, label_key)]
    wanted = round(int(count) * float(positive_fraction))
    if wanted > len(positives) or count - wanted > len(negatives):
        raise ValueError(
            f"config keys 'real_count', 'positive_fraction': {count} cases with {wanted} positive(s) asked for, the "
            f"training pool has {len(positives)} positive and {len(negatives)} negative case(s)"
        )
    rng = random.Random(int(seed))
    return rng.sample(positives, wanted) + rng.sample(negatives, int(count) - wanted)


def validation_split(
    cases: Sequence[Mapping[str, Any]], fraction: float, seed: int, label_key: str = "cancer", pool: str = "training"
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(kept, held out): a stratified share ``fraction`` of ``cases`` held out, per class (:func:`case_label`)
    ``max(1, round(fraction * count))`` cases but never all of a class, drawn at random with ``seed``; kept cases in
    their given order.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or a class with fewer than 2 cases (one must train, one validate),
            naming ``pool`` and the counts.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"config key 'validation_fraction': expected a share in (0, 1), got {fraction}")
    rng = random.Random(int(seed))
    held: list[Mapping[str, Any]] = []
    for flag in (1, 0):
        members = [c for c in cases if case_label(c, label_key) == flag]
        if len(members) < 2:
            raise ValueError(
                f"config key 'validation_fraction': the {pool} images hold {len(members)} "
                f"{'positive' if flag else 'negative'} case(s); a validation split (to tune the F1 threshold) needs "
                "at least 2 of each class, one to train on and one to validate (raise 'real_count' / "
                "'positive_fraction', or give a fixed 'f1_threshold')"
            )
        held += rng.sample(members, min(max(1, round(float(fraction) * len(members))), len(members) - 1))
    held_ids = _ids(held)
    return [c for c in cases if str(c["case_id"]) not in held_ids], sorted(held, key=lambda c: str(c["case_id"]))


class ClassificationUtility(UtilityExperiment):
    """Does the synthetic data help an image-level classifier? Paper 003's downstream experiment in the same harness.

    A classifier (two logits: negative, positive) is trained per arm and seed with the same optimiser steps; arms
    ``real`` (``real_count`` real cases, ``positive_fraction`` of them positive: the paper's 10 % cancer), then
    ``real+synN`` for N = multiple x ``real_count``, and the sanity arms. Every network is scored on the held-out
    test cases (and on ``shifted_test_cases``, a shifted domain, when given): the positive-class probability per case.
    The report gives, per arm, AUC and F1 (seed means, :mod:`common.metrics.classification`) with 95 % bootstrap
    intervals over test cases, and each arm against ``real``: the difference with its paired-bootstrap interval and
    a paired permutation test, Bonferroni-corrected for the arms compared.

    The F1 decision threshold (``f1_threshold``):

    - ``"tuned"`` (default): chosen per arm and seed on a validation split of that arm's training data, where it
      maximises F1 (:func:`common.metrics.classification.tune_threshold`); F1 on the test sets at that threshold.
      The split is the same rule in every arm: a stratified ``validation_fraction`` of the arm's **real** training
      images (:func:`validation_split`, drawn once with ``subset_seed``; at least one positive and one negative) is
      held out of training and scored with the test images; the synthetic images all train. Every arm drawing on the
      scarce real set (``real``, ``real+synN``) therefore holds out the same real images and trains on the same
      remaining real images, so the arms still differ only by their synthetic images; the threshold is tuned on
      real images, the domain of the test set, and never sees a test label (``real_all`` holds out the same share of
      all training images, ``ceiling`` of the test images it trains on). The bootstrap intervals and the paired
      comparisons use each seed's own threshold. The fixed-threshold F1 (``fixed_threshold``, 0.5) is reported
      beside it as ``f1_fixed``. Arms without real training images (``synthetic_only_arms``) need a fixed
      threshold.
    - a probability: every F1 at that threshold; nothing is held out (``f1`` only, no second reading).

    Args (beyond :class:`UtilityExperiment`'s, whose ``real_items`` / ``synthetic_items`` here return
    :func:`classification_items` and whose ``loss`` takes (logits, class index), e.g. ``CrossEntropyLoss``):
        positive_fraction: share of positive cases in the scarce real set.
        shifted_test_cases: a second held-out real test set from a shifted domain (scored, never trained on).
        f1_threshold: ``"tuned"`` or a probability in (0, 1) at or above which a case counts as positive for F1.
        fixed_threshold: the second, fixed-threshold F1 reading next to the tuned one (``f1_fixed``).
        validation_fraction: share of an arm's real training images held out to tune the threshold (``"tuned"``).
        resamples: bootstrap / permutation resamples.
        label_key: the case flag that is the class.
    """

    plot_metric = "auc"

    def __init__(
        self,
        *args: Any,
        positive_fraction: float = 0.1,
        shifted_test_cases: Sequence[Mapping[str, Any]] = (),
        f1_threshold: str | float = "tuned",
        fixed_threshold: float = 0.5,
        validation_fraction: float = 0.2,
        resamples: int = 1000,
        label_key: str = "cancer",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(f"config key 'positive_fraction': expected a share in [0, 1], got {positive_fraction}")
        self.tuned = str(f1_threshold) == "tuned"
        try:
            threshold = None if self.tuned else float(f1_threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if not self.tuned and not 0.0 < threshold < 1.0:
            raise ValueError(
                f"config key 'f1_threshold': expected 'tuned' or a probability in (0, 1), got {f1_threshold!r}"
            )
        if not 0.0 < float(fixed_threshold) < 1.0:
            raise ValueError(f"config key 'fixed_threshold': expected a probability in (0, 1), got {fixed_threshold}")
        self.f1_threshold = "tuned" if self.tuned else threshold
        self.fixed_threshold = float(fixed_threshold)
        self.validation_fraction = float(validation_fraction)
        self.positive_fraction = float(positive_fraction)
        self.label_key = str(label_key)
        self.resamples = int(resamples)
        kwargs.setdefault("augmented_arms", False)
        kwargs.setdefault("synthetic_only_arms", False)
        super().__init__(*args, **kwargs)
        self.shifted_test_cases = sorted(shifted_test_cases, key=lambda c: str(c["case_id"]))
        if self.shifted_test_cases:
            check_held_out(self.shifted_test_cases, main_test_set_cases=self.test_cases, **self.held_out_from)
        self.validation_cases: dict[str, list[Mapping[str, Any]]] = {}
        if self.tuned:
            without_real = [arm.name for arm in self.arms if arm.real == "none"]
            if without_real:
                raise ValueError(
                    f"config key 'f1_threshold': 'tuned' holds out real training images to tune the threshold on, "
                    f"but the arms {without_real} have none; give a fixed probability or synthetic_only_arms false"
                )
            pools = {"scarce": self.scarce_cases, "all": self.train_cases, "test": self.test_cases}
            names = {"scarce": "scarce real training", "all": "real training", "test": "test (ceiling arm)"}
            seed = int(kwargs.get("subset_seed", 0))
            for pool in dict.fromkeys(arm.real for arm in self.arms):
                _, held = validation_split(pools[pool], self.validation_fraction, seed, self.label_key, names[pool])
                self.validation_cases[pool] = held

    def draw_scarce(self, count: int, seed: int) -> list[Mapping[str, Any]]:
        """A stratified draw: ``positive_fraction`` of the ``count`` real cases positive."""
        return stratified_draw(self.train_cases, count, self.positive_fraction, seed, self.label_key)

    def scored_items(self, real: Mapping[str, list[dict]]) -> list[dict]:
        """The held-out test items, then those of the shifted test set (loaded once)."""
        if not hasattr(self, "_shifted_items"):
            self._shifted_items = list(self.real_items(self.shifted_test_cases)) if self.shifted_test_cases else []
        return [*real["test"], *self._shifted_items]

    def _held_out(self, arm: UtilityArm) -> set[str]:
        return _ids(self.validation_cases.get(arm.real, []))

    def training_items(self, arm: UtilityArm, real: Mapping[str, list[dict]], synthetic: list[dict]) -> list[dict]:
        """The arm's real items but its validation split, then its synthetic items."""
        held = self._held_out(arm)
        return [item for item in super().training_items(arm, real, synthetic) if item["case_id"] not in held]

    def validation_items(self, arm: UtilityArm, real: Mapping[str, list[dict]], synthetic: list[dict]) -> list[dict]:
        """The arm's real items held out to tune its F1 threshold (none with a fixed ``f1_threshold``)."""
        held = self._held_out(arm)
        return [item for item in real[arm.real] if item["case_id"] in held]

    def settings(
        self, arm: UtilityArm, items: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        return super().settings(arm, items, validation) | {
            "shifted_test_cases": sorted(_ids(self.shifted_test_cases)),
            "task": "classification",
        }

    @torch.no_grad()
    def score(self, network: nn.Module, items: Sequence[dict]) -> dict[str, dict[str, float | int]]:
        """The positive-class probability (softmax of two logits) and the true class of every scored case."""
        network.eval()
        scores = {}
        for item in items:
            logits = torch.as_tensor(self.inferer(item["image"][None].to(self.device), network)).float().cpu()
            if logits.shape != (1, 2):
                raise ValueError(
                    f"config key 'network': the classifier must return (batch, 2) logits, got {tuple(logits.shape)}"
                )
            scores[item["case_id"]] = {
                "probability": float(torch.softmax(logits, dim=1)[0, 1]),
                "label": int(item["label"]),
            }
        return scores

    def headline(self, cases: Mapping[str, Mapping[str, Any]]) -> str:
        test = _ids(self.test_cases)
        labels = [c["label"] for k, c in cases.items() if k in test]
        probabilities = np.array([[c["probability"]] for k, c in cases.items() if k in test])
        return f"test AUC {classification_score('auc', labels, probabilities):.3f}"

    def _table(self, runs: Mapping[int, Mapping[str, Any]], cases: Sequence[str]) -> tuple[list[int], np.ndarray]:
        """(labels, (cases, seeds) probabilities) of one arm on ``cases``."""
        first = runs[self.seeds[0]]["cases"]
        labels = [int(first[c]["label"]) for c in cases]
        table = np.array([[runs[s]["cases"][c]["probability"] for s in self.seeds] for c in cases], dtype=np.float64)
        return labels, table

    def thresholds(self, arm: str, runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """The arm's F1 threshold per seed: tuned on each run's ``validation`` scores (never a test label), or the
        fixed ``f1_threshold``; with the validation F1 it reached and the split's size."""
        if not self.tuned:
            return {"rule": "fixed", "per_seed": [self.f1_threshold] * len(self.seeds)}
        choices = []
        for seed in self.seeds:
            validation = runs[seed].get("validation")
            if not validation:
                raise ValueError(f"arm '{arm}' seed {seed}: its run holds no validation scores to tune the threshold")
            scores = list(validation.values())
            choices.append(tune_threshold([v["label"] for v in scores], [v["probability"] for v in scores]))
        return {
            "rule": "tuned",
            "per_seed": [c.threshold for c in choices],
            "validation_f1": [c.f1 for c in choices],
            "validation_cases": choices[0].cases,
            "validation_positives": choices[0].positives,
        }

    def readings(self, threshold: Sequence[float]) -> dict[str, tuple[str, Sequence[float] | float]]:
        """Report name -> (metric, F1 threshold): AUC, F1 at the arm's (per-seed) threshold, and with a tuned
        threshold the fixed-threshold F1 beside it."""
        readings: dict[str, tuple[str, Sequence[float] | float]] = {"auc": ("auc", 0.5), "f1": ("f1", threshold)}
        if self.tuned:
            readings["f1_fixed"] = ("f1", self.fixed_threshold)
        return readings

    def statistics(self, runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
        """Per test set and arm: AUC and F1 with intervals; per compared arm: the paired comparison with ``real``."""
        sets = {"test": sorted(_ids(self.test_cases))}
        if self.shifted_test_cases:
            sets["shifted"] = sorted(_ids(self.shifted_test_cases))
        compared = [arm.name for arm in self.arms if not arm.sanity and arm.name != "real"]
        thresholds = {arm.name: self.thresholds(arm.name, runs[arm.name]) for arm in self.arms}
        arms: dict[str, Any] = {}
        comparisons: dict[str, dict[str, Any]] = {}
        for arm in self.arms:
            by_seed = runs[arm.name]
            counts = {"scarce": self.real_count, "all": len(self.train_cases), "test": len(self.test_cases)}
            held = len(self.validation_cases.get(arm.real, []))
            entry: dict[str, Any] = {
                "real_cases": counts.get(arm.real, 0) - held,
                "validation_cases": held,
                "synthetic": arm.synthetic,
                "augment": arm.augment,
                "sanity": arm.sanity,
                "f1_thresholds": thresholds[arm.name],
                "seconds": float(sum(by_seed[s]["seconds"] for s in self.seeds)),
            }
            readings = self.readings(thresholds[arm.name]["per_seed"])
            for name, cases in sets.items():
                labels, table = self._table(by_seed, cases)
                scores = {
                    reading: metric_with_ci(metric, labels, table, threshold, self.resamples)
                    for reading, (metric, threshold) in readings.items()
                }
                entry["metrics" if name == "test" else f"metrics_{name}"] = scores
                if arm.name not in compared:
                    continue
                _, baseline = self._table(runs["real"], cases)
                base_readings = self.readings(thresholds["real"]["per_seed"])
                for reading, (metric, threshold) in readings.items():
                    result = compare_arms(
                        metric,
                        labels,
                        table,
                        baseline,
                        threshold,
                        self.resamples,
                        baseline_threshold=base_readings[reading][1],
                    )
                    result["p_bonferroni"] = bonferroni(result["p"], len(compared)) if compared else None
                    comparisons.setdefault(f"vs real ({name})", {}).setdefault(arm.name, {})[reading] = result
            arms[arm.name] = entry
        test_labels = [int(runs["real"][self.seeds[0]]["cases"][c]["label"]) for c in sets["test"]]
        results: dict[str, Any] = {
            "complete": True,
            "task": "classification",
            "settings": {
                "real_count": self.real_count,
                "positive_fraction": self.positive_fraction,
                "seeds": self.seeds,
                "iterations": self.iterations,
                "batch_size": self.batch_size,
                "f1_threshold": self.f1_threshold,
                "fixed_threshold": self.fixed_threshold if self.tuned else None,
                "validation_fraction": self.validation_fraction if self.tuned else None,
                "resamples": self.resamples,
                "network": self.network_summary(),
            },
            "cases": {
                "test": sets["test"],
                "test_positives": int(sum(test_labels)),
                "shifted": sets.get("shifted", []),
                "scarce_real": sorted(_ids(self.scarce_cases)),
                "scarce_real_positives": sum(case_label(c, self.label_key) for c in self.scarce_cases),
                "validation": {pool: sorted(_ids(cases)) for pool, cases in self.validation_cases.items()},
                "training": sorted(_ids(self.train_cases)),
                "generator": sorted(_ids(self.generator_cases)),
                "seeding": sorted(_ids(self.seed_cases)),
                "held_out_from": {role: len(cases) for role, cases in self.held_out_from.items()},
            },
            "arms": arms,
            "comparisons": comparisons,
            "comparisons_count": len(compared),
        }
        if "real_all" in arms and "ceiling" in arms:
            best, top = arms["real_all"]["metrics"]["auc"]["mean"], arms["ceiling"]["metrics"]["auc"]["mean"]
            results["sanity"] = {
                "real_all_auc": best,
                "ceiling_auc": top,
                "ratio": best / top if best is not None and top else None,
            }
        return results

    def threshold_rule(self, settings: Mapping[str, Any]) -> str:
        """The report's sentence on the F1 threshold(s)."""
        if settings["f1_threshold"] != "tuned":
            return f"F1: positive at probability >= {settings['f1_threshold']:g} (fixed)."
        return (
            "F1 (tuned): positive at probability >= a threshold chosen per arm and seed where it maximises F1 on a "
            "validation split of that arm's training data (a stratified "
            f"{100 * settings['validation_fraction']:g} % of its real training images, the same images in every "
            "arm on the same real set, held out of training; the "
            "synthetic images all train), never on test labels; its intervals and comparisons use each seed's own "
            f"threshold. F1 at {settings['fixed_threshold']:g}: the fixed threshold, for comparison."
        )

    def markdown(self, results: Mapping[str, Any]) -> str:
        """One table per test set: AUC and F1 per arm with intervals, per-seed AUC and threshold, the comparison with
        real."""

        def interval(summary: Mapping[str, Any] | None) -> str:
            if summary is None or summary["mean"] is None:
                return "-"
            if summary["ci_low"] is None:
                return f"{summary['mean']:.3f}"
            return f"{summary['mean']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"

        def versus(result: Mapping[str, Any] | None) -> str:
            if result is None or result["difference"] is None:
                return "-"
            text = f"{result['difference']:+.3f}"
            if result["ci_low"] is not None:
                text += f" [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"
            return text + (f", p {result['p_bonferroni']:.3g}" if result["p"] is not None else "")

        settings, cases = results["settings"], results["cases"]
        tuned = settings["f1_threshold"] == "tuned"
        names = {"auc": "AUC", "f1": "F1 (tuned)" if tuned else f"F1 at {settings['f1_threshold']:g}"}
        if tuned:
            names["f1_fixed"] = f"F1 at {settings['fixed_threshold']:g}"
        validation = sum(len(ids) for ids in cases["validation"].values())
        lines = [
            f"# {self.title}",
            "",
            f"{len(cases['test'])} held-out real test images ({cases['test_positives']} positive; never seen by the "
            f"generator's training, the guidance references or the pathology patches); {settings['real_count']} real "
            f"training images ({cases['scarce_real_positives']} positive"
            + (
                f"; {len(cases['validation'].get('scarce', []))} of them held out to tune the F1 threshold"
                if validation
                else ""
            )
            + f"); seeds {settings['seeds']}; {settings['iterations']} optimiser steps of batch "
            f"{settings['batch_size']} in every arm; network {settings['network']}.",
            "AUC and F1: means over seeds, 95 % percentile bootstrap interval over test images "
            f"({settings['resamples']} resamples); vs real: the difference with its paired-bootstrap interval and a "
            "paired permutation test (each image's predictions swapped between the arms), Bonferroni-corrected for "
            f"{results['comparisons_count']} comparison(s).",
            self.threshold_rule(settings),
        ]
        sets = [("test", "metrics", "held-out test set")]
        if cases["shifted"]:
            sets.append(("shifted", "metrics_shifted", f"shifted test set ({len(cases['shifted'])} images)"))
        for name, key, heading in sets:
            columns = [f"{names[r]} [95 % CI]" for r in names] + ["AUC per seed", "F1 threshold per seed"]
            columns += [f"{names[r]} vs real" for r in names]
            rows = [
                "| arm | real (+ validation) | synthetic | " + " | ".join(columns) + " |",
                "|" + "---|" * (3 + len(columns)),
            ]
            for arm_name, arm in results["arms"].items():
                metrics = arm[key]
                seeds = ", ".join("-" if v is None else f"{v:.3f}" for v in metrics["auc"]["per_seed"])
                thresholds = ", ".join(f"{v:.3f}" for v in arm["f1_thresholds"]["per_seed"])
                against = results["comparisons"].get(f"vs real ({name})", {}).get(arm_name, {})
                real = f"{arm['real_cases']}" + (f" (+ {arm['validation_cases']})" if arm["validation_cases"] else "")
                cells = [interval(metrics.get(r)) for r in names] + [seeds, thresholds]
                cells += [versus(against.get(r)) for r in names]
                rows.append(f"| {arm_name} | {real} | {arm['synthetic']} | " + " | ".join(cells) + " |")
            lines += ["", f"## {heading}", "", *rows]
        if results.get("sanity") and results["sanity"]["ratio"] is not None:
            s = results["sanity"]
            lines += [
                "",
                f"Harness sanity: real_all AUC {s['real_all_auc']:.3f} / ceiling AUC {s['ceiling_auc']:.3f} = "
                f"{s['ratio']:.3f} (ceiling: the same network and budget trained on the test images themselves).",
            ]
        return "\n".join(lines) + "\n"
