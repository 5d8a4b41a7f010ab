"""Inference workflow of the guidance bundle (paper 003): an unconditional DDPM steered by an anatomy reference and a
pathology patch (multi-condition ILVR, :mod:`common.inferers.guidance`), written as an annotated 2D dataset.

For every anatomy reference, ``num_samples`` images are drawn. A sample gets a pathology patch with probability
``pathology_fraction``: a patch drawn from the pool, randomly rotated / flipped / translated (the paper's
augmentation), prepared against the reference (histogram equalisation, normalisation to the reference's min and a
random 0.975-0.995 quantile, Gaussian edge weighting) and placed where its lesion lies inside the reference's breast.
The anatomy condition (``N_a``, ``a_a``, weight) guides the whole image; the pathology condition (``N_p``, ``a_p``) is
weighted by the Gaussian ``W`` of Eq. 5 inside the patch box.

Each sample is written as ``imagesTr/<id>.nii.gz`` (float32, intensities of the training data mapped back from
[-1, 1] to ``output_range``), ``labelsTr/<id>.nii.gz`` (uint8 lesion mask: the placed patch mask, empty without a
lesion) and ``provenance/<id>.json`` (anatomy reference, patch and its lesion kind, position, quantile, every
condition's N / a / weight, the seed and sampler), plus ``dataset.json`` (with a per-image ``cancer`` flag and
``lesion`` kind: "none", or the patch's "mass" / "calcification" / ...) and a PNG preview. A sample is a
function of (seed, reference id, index) only; nothing is overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import Scheduler
from monai.transforms import Randomizable

from common.checkpoint import file_hash
from common.inferers.guidance import (
    GuidanceCondition,
    GuidedDiffusionInferer,
    MultiConditionGuidance,
    gaussian_patch_weight,
)
from common.inferers.per_sample import per_sample_noise
from common.io import atomic_write_nifti, atomic_write_text, read_nifti, save_preview_png
from common.transforms.pathology import PatchFade, edge_fade_weight, paste_patch, place_patch
from common.workflows.base import SamplingItem, SamplingWorkflow

__all__ = ["ConditionSettings", "GuidedSampling", "UNSPECIFIED_LESION", "lesion_kind"]

UNSPECIFIED_LESION = "unspecified"
"""The lesion kind of a patch whose entry names none (a folder of patches without a ``dataset.json`` kind)."""


def lesion_kind(patch_entry: Mapping[str, Any]) -> str:
    """The kind of a pathology patch (``"mass"``, ``"calcification"``, ...): its entry's ``lesion`` (the phantom's
    ``dataset.json`` ``patches`` entries carry it), else :data:`UNSPECIFIED_LESION`."""
    return str(patch_entry.get("lesion") or UNSPECIFIED_LESION)


class ConditionSettings(dict):
    """One condition's settings as the config gives them: ``factor`` (N_s), ``stop`` (a_s, training timesteps),
    ``weight`` (a scalar factor on W_s; the pathology W's peak) and ``mode`` (low-pass filter)."""

    def __init__(self, factor: int, stop: int, weight: float = 1.0, mode: str = "area") -> None:
        super().__init__(factor=int(factor), stop=int(stop), weight=float(weight), mode=str(mode))


def _seed32(value: int) -> int:
    return int(value) % (2**32)


class GuidedSampling(SamplingWorkflow):
    """Guided samples per anatomy reference, each written with its lesion mask and provenance (module docstring).

    Args:
        network: the trained unconditional denoiser (eval mode, weights loaded).
        inferer: :class:`common.inferers.guidance.GuidedDiffusionInferer`.
        scheduler: sampling scheduler (paper: DDPM with all T steps; any respaced / fast one works).
        num_inference_steps: steps of ``scheduler.set_timesteps``.
        output_dir: output folder.
        spatial_size: the model grid (H, W); a reference of another size is an error.
        references: anatomy references ``[{"case_id", "image", "label"?}]``.
        reference_preprocessing: entry -> ``{"image": (1, *spatial) in [-1, 1], "label"?: (1, *spatial)}``.
        patches: pathology patches ``[{"case_id", "image", "label"}]`` (label: the lesion mask); may be empty when
            ``pathology_fraction`` is 0.
        patch_preprocessing: entry -> ``{"patch", "patch_mask"}`` (channel-first, loaded).
        patch_augmentation: random spatial transform of ``{"patch", "patch_mask"}`` (MONAI ``Rand*d``), or None.
        patch_normalize: :class:`common.transforms.pathology.PathologyPatchNormalized` on ``patch`` against
            ``reference`` / ``breast``.
        anatomy: the anatomy condition's :class:`ConditionSettings`.
        pathology: the pathology condition's :class:`ConditionSettings` (``weight``: the peak of W).
        patch_sigma_fraction: W's sigma as a share of the patch side.
        pathology_fraction: share of samples that get a lesion (their ``cancer`` flag is 1).
        breast_labels: label values of a reference's label map where a lesion may go; a reference without a label
            map uses ``reference > breast_threshold`` (in [-1, 1]).
        breast_threshold: see ``breast_labels``.
        patch_position: a fixed patch corner (row, col) instead of a random one, or None.
        combine: "sum" (Eq. 4 literally) or "sequential".
        patch_fade: :class:`common.transforms.pathology.PatchFade`: ``minimum`` (the patch, faded by
            ``patch_normalize``, replaces its box) or ``reference`` (the unfaded patch is blended into the reference
            with the Gaussian edge weight of ``patch_edge_sigma_fraction``; ``patch_normalize`` must not fade).
        patch_edge_sigma_fraction: the edge weight's sigma as a share of the patch side (``reference`` fade only).
        anatomy_carries_lesion: False: the anatomy condition's reference is the lesion-free image (Eq. 4 as
            written, whose anatomy term pulls the lesion's low frequencies back out); True: a sample with a lesion
            is guided towards the reference with its patch put in by both conditions (a project option).
        guided: False samples without any guidance (the baseline of the benchmark).
        output_range: (low, high) the [-1, 1] samples are mapped to in the written files.
        keyword options: as for :class:`common.workflows.base.SamplingWorkflow`.
    """

    seed_in_file_names = False

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: GuidedDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        output_dir: str,
        spatial_size: Sequence[int],
        references: Sequence[Mapping[str, Any]],
        reference_preprocessing: Callable[[dict], dict],
        patches: Sequence[Mapping[str, Any]],
        patch_preprocessing: Callable[[dict], dict],
        patch_normalize: Callable[[dict], dict],
        anatomy: Mapping[str, Any],
        pathology: Mapping[str, Any],
        patch_augmentation: Callable[[dict], dict] | None = None,
        patch_sigma_fraction: float = 0.25,
        pathology_fraction: float = 1.0,
        breast_labels: Sequence[int] = (1,),
        breast_threshold: float = -0.9,
        patch_position: Sequence[int] | None = None,
        combine: str = "sum",
        patch_fade: str = PatchFade.MINIMUM,
        patch_edge_sigma_fraction: float | None = None,
        anatomy_carries_lesion: bool = False,
        guided: bool = True,
        output_range: Sequence[float] = (0.0, 1.0),
        **options: Any,
    ) -> None:
        super().__init__(scheduler, num_inference_steps, output_dir, **options)
        if not 0.0 <= float(pathology_fraction) <= 1.0:
            raise ValueError(f"config key 'pathology_fraction': expected a share in [0, 1], got {pathology_fraction}")
        if float(pathology_fraction) > 0 and not patches:
            raise ValueError("config key 'patch_dir': pathology_fraction > 0 needs pathology patches, found none")
        if not references:
            raise ValueError("config key 'references': no anatomy reference found")
        self.spatial_size = tuple(int(v) for v in spatial_size)
        self.network = network
        self.inferer = inferer
        self.references = [dict(r) for r in references]
        self.reference_preprocessing = reference_preprocessing
        self.patches = [dict(p) for p in patches]
        self.patch_preprocessing = patch_preprocessing
        self.patch_augmentation = patch_augmentation
        self.patch_normalize = patch_normalize
        self.settings = {"anatomy": ConditionSettings(**anatomy), "pathology": ConditionSettings(**pathology)}
        self.patch_sigma_fraction = float(patch_sigma_fraction)
        self.pathology_fraction = float(pathology_fraction)
        self.breast_labels = [int(v) for v in breast_labels]
        self.breast_threshold = float(breast_threshold)
        self.patch_position = None if patch_position is None else [int(v) for v in patch_position]
        self.combine = str(combine)
        fades = [f.value for f in PatchFade]
        if str(patch_fade) not in fades:
            raise ValueError(f"config key 'patch_fade': expected one of {fades}, got {patch_fade!r}")
        self.patch_fade = PatchFade(str(patch_fade))
        normalize_fades = getattr(getattr(patch_normalize, "transform", None), "edge_sigma_fraction", None)
        if self.patch_fade == PatchFade.REFERENCE:
            if patch_edge_sigma_fraction is None or not float(patch_edge_sigma_fraction) > 0:
                raise ValueError(
                    "config key 'patch_edge_sigma_fraction': patch_fade 'reference' blends with the edge weight and "
                    f"needs a sigma share > 0, got {patch_edge_sigma_fraction}"
                )
            if normalize_fades is not None:
                raise ValueError(
                    "config key 'patch_normalize': patch_fade 'reference' blends the patch into the reference, so "
                    f"the normalisation must not fade it as well (its edge_sigma_fraction is {normalize_fades})"
                )
        self.patch_edge_sigma_fraction = None if patch_edge_sigma_fraction is None else float(patch_edge_sigma_fraction)
        self.anatomy_carries_lesion = bool(anatomy_carries_lesion)
        self.guided = bool(guided)
        self.output_range = (float(output_range[0]), float(output_range[1]))
        # the settings are checked before any sampling (errors name the config keys)
        MultiConditionGuidance([], scheduler, self.combine)
        grid = (1, 1, *self.spatial_size)
        for name, setting in self.settings.items():
            condition = GuidanceCondition(
                name, torch.zeros(grid), setting["factor"], setting["stop"], mode=setting["mode"]
            )
            condition.check(grid, scheduler.num_train_timesteps)

    # ------------------------------------------------------------------------------------------------ file layout

    def sample_id(self, reference_id: str, index: int) -> str:
        return f"{reference_id}_sample{index:03d}"

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        name = self.sample_id(item.seed_key[0], index)
        return [
            self.output_dir / "imagesTr" / f"{name}.nii.gz",
            self.output_dir / "labelsTr" / f"{name}.nii.gz",
            self.output_dir / "provenance" / f"{name}.json",
        ]

    def modules(self) -> Sequence[torch.nn.Module]:
        return (self.network,)

    def items(self) -> list[SamplingItem]:
        return [
            SamplingItem(name=f"reference '{r['case_id']}'", seed_key=(r["case_id"],), data=r) for r in self.references
        ]

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "references": {r["case_id"]: file_hash(r["image"]) for r in self.references},
            "patches": {p["case_id"]: file_hash(p["image"]) for p in self.patches},
            "conditions": self.settings,
            "patch_sigma_fraction": self.patch_sigma_fraction,
            "pathology_fraction": self.pathology_fraction,
            "patch_position": self.patch_position,
            "combine": self.combine,
            "patch_fade": self.patch_fade.value,
            "patch_edge_sigma_fraction": self.patch_edge_sigma_fraction,
            "anatomy_carries_lesion": self.anatomy_carries_lesion,
            "guided": self.guided,
        }

    # --------------------------------------------------------------------------------------------------- sampling

    def prepare(self, item: SamplingItem) -> SamplingItem:
        """The reference on the model grid, its breast mask and its affine."""
        data = self.reference_preprocessing(dict(item.data))
        image = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)
        source = item.data["image"]
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"config key 'references': '{source}' holds NaN/inf values")
        if image.dim() != 3 or tuple(image.shape[1:]) != self.spatial_size:
            raise ValueError(
                f"config key 'references': '{source}' has shape {tuple(image.shape[1:])}, expected the model grid "
                f"(config key 'spatial_size') {list(self.spatial_size)}"
            )
        if data.get("label") is not None:
            label = torch.as_tensor(np.asarray(data["label"]))[0].round().long()
            breast = torch.isin(label, torch.tensor(self.breast_labels))
        else:
            breast = image[0] > self.breast_threshold
        affine = getattr(data["image"], "affine", None)
        prepared = {"entry": item.data, "image": image, "breast": breast, "affine": affine}
        return SamplingItem(name=item.name, seed_key=item.seed_key, data=prepared)

    def lesion_plan(self, item: SamplingItem, index: int) -> dict[str, Any] | None:
        """The pathology of sample ``index``: which patch, transformed how, placed where; None for no lesion.
        Drawn from the sample's own stream, so it depends on (seed, reference, index) only."""
        rng = np.random.default_rng(self.batch_seed(*item.seed_key, index, "pathology"))
        if not self.guided or rng.random() >= self.pathology_fraction:
            return None
        entry = self.patches[int(rng.integers(len(self.patches)))]
        data = self.patch_preprocessing(dict(entry))
        patch_shape = tuple(np.asarray(data["patch"]).shape[1:])
        if len(patch_shape) != len(self.spatial_size) or any(p > s for p, s in zip(patch_shape, self.spatial_size)):
            raise ValueError(
                f"config key 'patch_size': pathology patch '{entry['image']}' of size {patch_shape} is larger than the "
                f"image {self.spatial_size}"
            )
        data["reference"], data["breast"] = item.data["image"], item.data["breast"][None].float()
        for transform in (self.patch_augmentation, self.patch_normalize):
            if transform is None:
                continue
            if isinstance(transform, Randomizable):
                transform.set_random_state(seed=_seed32(int(rng.integers(2**31))))
            data = transform(data)
        patch = torch.as_tensor(np.asarray(data["patch"]), dtype=torch.float32)
        mask = torch.as_tensor(np.asarray(data["patch_mask"]))[0] > 0.5
        position = place_patch(mask, item.data["breast"], rng, self.patch_position)
        return {
            "entry": entry,
            "patch": patch,
            "mask": mask,
            "corner": position,
            "quantile": float(data.get("patch_quantile", float("nan"))),
        }

    def conditions(self, item: SamplingItem, plans: Sequence[dict[str, Any] | None]) -> list[GuidanceCondition]:
        """The anatomy condition and, when any sample of the batch has a lesion, the pathology condition (rows
        without a lesion get W = 0). With ``anatomy_carries_lesion`` the anatomy reference of a row with a lesion is
        the pathology condition's target image (the reference with the patch put in)."""
        if not self.guided:
            return []
        reference = item.data["image"][None]
        anatomy, pathology = self.settings["anatomy"], self.settings["pathology"]
        anatomy_weight = torch.full_like(reference, anatomy["weight"]) if anatomy["weight"] != 1.0 else None
        if not any(plans):
            anatomy_only = GuidanceCondition(
                "anatomy", reference, anatomy["factor"], anatomy["stop"], anatomy_weight, anatomy["mode"]
            )
            return [anatomy_only]
        targets, weights = [], []
        spatial = tuple(reference.shape[2:])
        for plan in plans:
            target = reference[0]
            weight = torch.zeros(1, *spatial)
            if plan is not None:
                patch_spatial = tuple(plan["patch"].shape[1:])
                fade = None
                if self.patch_fade == PatchFade.REFERENCE:
                    fade = edge_fade_weight(patch_spatial, self.patch_edge_sigma_fraction)
                target = paste_patch(reference[0], plan["patch"], plan["corner"], fade)
                weight = gaussian_patch_weight(
                    spatial, patch_spatial, plan["corner"], self.patch_sigma_fraction, pathology["weight"]
                )
            targets.append(target)
            weights.append(weight)
        targets = torch.stack(targets)
        anatomy_reference = targets.clone() if self.anatomy_carries_lesion else reference
        return [
            GuidanceCondition(
                "anatomy", anatomy_reference, anatomy["factor"], anatomy["stop"], anatomy_weight, anatomy["mode"]
            ),
            GuidanceCondition(
                "pathology",
                targets,
                pathology["factor"],
                pathology["stop"],
                weight=torch.stack(weights),
                mode=pathology["mode"],
            ),
        ]

    def sample_item(self, item: SamplingItem, first: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
        generators = self.sample_generators(item, first, count)
        plans = [self.lesion_plan(item, index) for index in range(first, first + count)]
        shape = (count, *item.data["image"].shape)
        noise = per_sample_noise(shape, generators, self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        conditions = [self._to_device(c) for c in self.conditions(item, plans)]
        guidance = MultiConditionGuidance(conditions, self.scheduler, self.combine) if conditions else None
        samples = self.inferer.sample(noise, self.network, self.scheduler, guidance, generators, self.verbose).cpu()
        results = []
        for offset, (sample, plan) in enumerate(zip(samples, plans)):
            lesion = torch.zeros(sample.shape[1:], dtype=torch.uint8)
            if plan is not None:
                box = tuple(slice(c, c + s) for c, s in zip(plan["corner"], plan["mask"].shape))
                lesion[box] = plan["mask"].to(torch.uint8)
            results.append((self.to_output(sample), lesion[None], self.provenance(item, first + offset, plan)))
        return results

    def _to_device(self, condition: GuidanceCondition) -> GuidanceCondition:
        condition.reference = condition.reference.to(self.device)
        condition.weight = None if condition.weight is None else condition.weight.to(self.device)
        return condition

    def to_output(self, sample: torch.Tensor) -> torch.Tensor:
        low, high = self.output_range
        return ((sample.clamp(-1.0, 1.0) + 1.0) / 2.0 * (high - low) + low).float()

    def provenance(self, item: SamplingItem, index: int, plan: dict[str, Any] | None) -> dict[str, Any]:
        """What made sample ``index``: reference, patch, placement, conditions, seed and sampler; ``lesion``: the
        placed patch's kind (:func:`lesion_kind`), "none" without a lesion."""
        record: dict[str, Any] = {
            "sample": self.sample_id(item.seed_key[0], index),
            "anatomy_reference": item.data["entry"]["image"],
            "anatomy_reference_label": item.data["entry"].get("label"),
            "seed": self.seed,
            "sample_seed": self.batch_seed(*item.seed_key, index),
            "sampler": type(self.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "guided": self.guided,
            "combine": self.combine,
            "conditions": {"anatomy": dict(self.settings["anatomy"])} if self.guided else {},
            "patch_fade": self.patch_fade.value,
            "anatomy_carries_lesion": self.anatomy_carries_lesion,
            "cancer": int(plan is not None),
            "lesion": "none" if plan is None else lesion_kind(plan["entry"]),
        }
        if plan is not None:
            record["conditions"]["pathology"] = dict(self.settings["pathology"]) | {
                "patch": plan["entry"]["image"],
                "patch_mask": plan["entry"]["label"],
                "lesion": lesion_kind(plan["entry"]),
                "corner": list(plan["corner"]),
                "patch_size": list(plan["mask"].shape),
                "quantile": plan["quantile"],
                "sigma_fraction": self.patch_sigma_fraction,
            }
        return record

    # ---------------------------------------------------------------------------------------------------- writing

    def write_item(self, item: SamplingItem, index: int, sample: tuple[torch.Tensor, torch.Tensor, dict]) -> None:
        image_path, label_path, record_path = self.sample_paths(item, index)
        image, lesion, record = sample
        affine = item.data["affine"]
        atomic_write_nifti(image, affine, image_path, dtype="float32", overwrite=self.overwrite)
        atomic_write_nifti(lesion, affine, label_path, dtype="uint8", overwrite=self.overwrite)
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n", overwrite=self.overwrite)

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        image, label, record = self.sample_paths(item, index)
        entry = {"case_id": self.sample_id(item.seed_key[0], index), "image": str(image), "label": str(label)}
        if record.is_file():
            content = json.loads(record.read_text())
            entry |= {"cancer": content["cancer"], "lesion": content.get("lesion"), "provenance": str(record)}
        return entry

    def datalist_entry(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        out = super().datalist_entry(entry)
        if "provenance" in out:
            out["provenance"] = self.relative(out["provenance"])
        return out

    def read_sample(self, item: SamplingItem, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, _ = self.sample_paths(item, index)
        return read_nifti(image), read_nifti(label)

    def preview_of(self, item: SamplingItem, index: int, sample: tuple[torch.Tensor, ...]) -> list[tuple]:
        reference = self.to_output(item.data["image"][0])
        name = self.sample_id(item.seed_key[0], index)
        return [(f"{name} reference", reference, None), (name, sample[0], sample[1] > 0)]

    def write_preview(self, previews: list[list[tuple]]) -> None:
        rows = [row for preview in previews for row in preview]
        save_preview_png(
            self.preview_path(),
            [(title, image) for title, image, _ in rows],
            masks=[mask for _, _, mask in rows],
            spatial_dims=2,
            value_range=self.output_range,
            overwrite=True,
        )

    def datalist_fields(self) -> dict[str, Any]:
        return {
            "name": "synthetic",
            "description": "multi-condition guided samples (paper 003) with lesion masks and provenance records",
            "modality": {"0": "MG"},
            "labels": {"0": "background", "1": "lesion"},
        }
