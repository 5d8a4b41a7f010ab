"""Inference workflow of the paired PET-CT bundle: sample (CT, PET, mask) triples jointly and write them as a dataset.

Each sample is written as three NIfTI files that share one affine (the training grid spacing), in the HECKTOR layout
the bundle reads: ``imagesTr/<id>__CT.nii.gz`` (Hounsfield units), ``imagesTr/<id>__PT.nii.gz`` (SUV) and
``labelsTr/<id>.nii.gz`` (uint8 {0, 1}), plus a ``dataset.json`` datalist and a PNG montage (one row per sample,
columns CT, PET and mask, the mask outline drawn over CT and PET). The output folder is a synthetic training set.
Existing files are never overwritten: the run stops before any sampling if one of its outputs exists.

Noise seeding (the paper's "seeded" configuration): sample ``i`` starts from real triple ``i mod n`` of
``reference_data`` noised to ``seed_fraction`` of the schedule; the datalist records which real slice seeded it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.inferers.paired import PairedDiffusionInferer
from common.io import (
    atomic_write_nifti,
    enlarge_nearest,
    enlargement_factor,
    montage,
    overlay_outline,
    read_nifti,
    window_uint8,
    write_png,
)
from common.transforms.validation import checked_range
from common.workflows.base import SamplingItem, SamplingWorkflow

__all__ = ["to_unit_range", "from_unit_range", "slice_affine", "PairedSampling"]


def to_unit_range(values: torch.Tensor | np.ndarray, window: Sequence[float]) -> torch.Tensor:
    """Map ``window = (low, high)`` linearly to [-1, 1], clipping outside (the training intensity transform)."""
    low, high = checked_range(window, "intensity window")
    values = torch.as_tensor(values, dtype=torch.float32)
    return ((values.clamp(low, high) - low) / (high - low) * 2.0 - 1.0).float()


def from_unit_range(values: torch.Tensor | np.ndarray, window: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`to_unit_range`: [-1, 1] back to ``window`` units (values outside [-1, 1] are clipped)."""
    low, high = checked_range(window, "intensity window")
    values = torch.as_tensor(values, dtype=torch.float32).clamp(-1.0, 1.0)
    return (values + 1.0) / 2.0 * (high - low) + low


def slice_affine(spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """RAS affine of a 2D slice saved as an (H, W, 1) volume: ``pixdim`` spacing, centred on the world origin."""
    if len(pixdim) != 3 or len(spatial_size) != 2:
        raise ValueError(f"expected a 2D spatial_size and a 3-value pixdim, got {spatial_size} and {pixdim}")
    affine = np.diag([*(float(p) for p in pixdim), 1.0])
    affine[:2, 3] = [-(n - 1) / 2.0 * float(p) for n, p in zip(spatial_size, pixdim[:2])]
    return affine


class PairedSampling(SamplingWorkflow):
    """Sample ``num_samples`` (CT, PET, mask) triples and write them (see the module docstring).

    Args:
        network: ``nn.ModuleDict`` of trained denoisers keyed by modality (EMA weights loaded).
        inferer: :class:`common.inferers.paired.PairedDiffusionInferer`.
        scheduler: sampling scheduler (the full ancestral sampler, or a fast one such as DPM-Solver++).
        spatial_size: (H, W) of the samples (the training crop).
        pixdim: voxel size (mm) written in the affine, 3 values (the slice thickness last).
        ct_window: HU window the CT was scaled with in training; samples are mapped back through it.
        pet_window: SUV window of the PET, likewise.
        num_samples: number of triples.
        batch_size: triples generated together.
        reference_data: noise seeding: a sequence of real training-style items (dicts with ``ct``, ``pet`` and
            ``mask`` tensors of shape (1, H, W) in [-1, 1], optionally ``case_id`` and ``slice_index``).
        seed_fraction: noise seeding: the fraction of the schedule the references are noised to (paper 0.8-0.9);
            None samples from pure noise.
        refine_rounds: agreement refinement rounds after sampling (see ``PairedDiffusionInferer.sample``); 0 is off.
        refine_fraction: the fraction of the schedule each refinement round goes back to.
        modalities: network keys, in condition order. Default ("ct", "pet", "mask").
        num_inference_steps, output_dir and the keyword options (seed, device, preview_samples, verbose, overwrite,
            run_fields, ...): as for
            :class:`common.workflows.base.SamplingWorkflow`.
    """

    unit = "triple"

    def __init__(
        self,
        network: nn.ModuleDict,
        inferer: PairedDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        output_dir: str,
        spatial_size: Sequence[int] = (128, 128),
        pixdim: Sequence[float] = (2.0, 2.0, 2.0),
        ct_window: Sequence[float] = (-1000.0, 1000.0),
        pet_window: Sequence[float] = (0.0, 10.0),
        reference_data: Sequence[Mapping[str, Any]] | None = None,
        seed_fraction: float | None = None,
        modalities: Sequence[str] = ("ct", "pet", "mask"),
        refine_rounds: int = 0,
        refine_fraction: float = 0.1,
        **options: Any,
    ) -> None:
        options.setdefault("preview_samples", 8)
        super().__init__(scheduler, num_inference_steps, output_dir, **options)
        if seed_fraction is not None and not reference_data:
            raise ValueError(
                "config key 'seed_fraction': noise seeding needs real reference triples ('reference_data'), got none"
            )
        if list(modalities) != ["ct", "pet", "mask"]:
            raise ValueError(f"modalities must be ['ct', 'pet', 'mask'] (the file layout), got {list(modalities)}")
        self.network = network
        self.inferer = inferer
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.affine = slice_affine(self.spatial_size, pixdim)
        self.windows = {"ct": tuple(ct_window), "pet": tuple(pet_window)}
        for window in self.windows.values():
            from_unit_range(torch.zeros(1), window)  # validates the window
        self.reference_data = reference_data
        self.seed_fraction = seed_fraction
        scheduler.set_timesteps(self.num_inference_steps)
        try:
            refine_start = inferer.refinement_start(scheduler, refine_rounds, refine_fraction)
        except ValueError as error:
            raise ValueError(f"config keys 'refine_rounds'/'refine_fraction': {error}") from None
        if seed_fraction is not None and refine_start >= inferer.seed_timestep(scheduler, float(seed_fraction)):
            raise ValueError(
                f"config key 'refine_fraction': {refine_fraction} must restart refinement below the seeded start "
                f"(seed_fraction {seed_fraction}), else it undoes the seeding"
            )
        self.refine_rounds = int(refine_rounds)
        self.refine_fraction = float(refine_fraction)
        self.modalities = list(modalities)

    def sample_id(self, index: int) -> str:
        return f"synthetic_seed{self.seed}_{index:04d}"

    def paths(self, index: int) -> dict[str, Path]:
        case = self.sample_id(index)
        return {
            "ct": self.output_dir / "imagesTr" / f"{case}__CT.nii.gz",
            "pet": self.output_dir / "imagesTr" / f"{case}__PT.nii.gz",
            "mask": self.output_dir / "labelsTr" / f"{case}.nii.gz",
        }

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        return list(self.paths(index).values())

    def manifest_fields(self) -> dict[str, Any]:
        """The grid, the intensity windows, noise seeding (with its reference count) and refinement."""
        return {
            "spatial_size": self.spatial_size,
            "affine": self.affine.tolist(),
            "windows": self.windows,
            "seed_fraction": self.seed_fraction,
            "num_references": len(self.reference_data) if self.seed_fraction is not None else 0,
            "refine_rounds": self.refine_rounds,
            "refine_fraction": self.refine_fraction,
        }

    def modules(self) -> Sequence[nn.Module]:
        return (self.network,)

    def references(self, first: int, count: int) -> tuple[dict[str, torch.Tensor] | None, list[str | None]]:
        """The seeding references of samples ``first .. first + count - 1`` (cycling through reference_data)."""
        if self.seed_fraction is None:
            return None, [None] * count
        items = [self.reference_data[(first + k) % len(self.reference_data)] for k in range(count)]
        stacked = {}
        for m in self.modalities:
            images = [torch.as_tensor(item[m], dtype=torch.float32) for item in items]
            for item, image in zip(items, images):
                if tuple(image.shape) != (1, *self.spatial_size):
                    raise ValueError(
                        f"reference '{item.get('case_id', '?')}' {m} must have shape {(1, *self.spatial_size)} "
                        f"(the configured spatial_size), got {tuple(image.shape)}"
                    )
            stacked[m] = torch.stack(images)
        names = [f"{item.get('case_id', 'reference')}:{item.get('slice_index', '?')}" for item in items]
        return stacked, names

    def generate(self, first: int, count: int) -> tuple[dict[str, torch.Tensor], list[str | None]]:
        """``count`` triples starting at sample index ``first`` (unit range), and the reference of each."""
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        reference, names = self.references(first, count)
        samples = self.inferer.sample(
            (count, 1, *self.spatial_size),
            self.network,
            self.scheduler,
            generator=self.sample_generators(SamplingItem(), first, count),
            reference=reference,
            seed_fraction=self.seed_fraction,
            device=self.device,
            verbose=self.verbose,
            refine_rounds=self.refine_rounds,
            refine_fraction=self.refine_fraction,
        )
        return {m: samples[m].detach().cpu() for m in self.modalities}, names

    def to_output_units(self, samples: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CT in HU, PET in SUV (float32), mask as uint8 {0, 1} (positive values are tumour)."""
        return {
            "ct": from_unit_range(samples["ct"], self.windows["ct"]),
            "pet": from_unit_range(samples["pet"], self.windows["pet"]),
            "mask": (samples["mask"] > 0).to(torch.uint8),
        }

    def sample_item(
        self, item: SamplingItem, first: int, count: int
    ) -> list[tuple[dict[str, torch.Tensor], str | None]]:
        """(triple in output units, name of the real slice that seeded it or None) per sample."""
        samples, names = self.generate(first, count)
        values = self.to_output_units(samples)
        return [({m: values[m][k] for m in self.modalities}, names[k]) for k in range(count)]

    def write_item(self, item: SamplingItem, index: int, sample: tuple[dict[str, torch.Tensor], str | None]) -> None:
        """Write one triple ((1, H, W) tensors in output units) as (H, W, 1) volumes sharing ``self.affine``."""
        paths = self.paths(index)
        for m in self.modalities:
            dtype = "uint8" if m == "mask" else "float32"
            atomic_write_nifti(sample[0][m][..., None], self.affine, paths[m], dtype=dtype, overwrite=self.overwrite)

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        """CT and PET images, the mask label, and (noise seeding) the real slice that seeded the triple."""
        paths = {key: str(path) for key, path in self.paths(index).items()}
        entry = {"case_id": self.sample_id(index), "image": [paths["ct"], paths["pet"]], "label": paths["mask"]}
        seeded_from = self.references(index, 1)[1][0]
        if seeded_from is not None:
            entry["seeded_from"] = seeded_from
        return entry

    def read_sample(self, item: SamplingItem, index: int) -> tuple[dict[str, torch.Tensor], None]:
        """A written triple as (1, H, W) tensors in output units (the mask as uint8)."""
        triple = {m: read_nifti(path)[..., 0][None] for m, path in self.paths(index).items()}
        triple["mask"] = triple["mask"].to(torch.uint8)
        return triple, None

    def preview_of(
        self, item: SamplingItem, index: int, sample: tuple[dict[str, torch.Tensor], str | None]
    ) -> list[np.ndarray]:
        return self.preview_row(sample[0])

    def preview_row(self, triple: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
        """CT and PET with the mask outline, then the mask; rotated so anterior is up (RAS, as the 3D previews)."""
        mask = np.rot90(triple["mask"][0].numpy().astype(bool))
        ct = window_uint8(np.rot90(triple["ct"][0].numpy()), self.windows["ct"])
        pet = window_uint8(np.rot90(triple["pet"][0].numpy()), self.windows["pet"])
        factor = enlargement_factor(mask.shape, 160)

        def enlarge(image: np.ndarray) -> np.ndarray:
            return enlarge_nearest(image, factor)

        outlined = [overlay_outline(enlarge(image), enlarge(mask)) for image in (ct, pet)]
        mask_cell = enlarge(mask.astype(np.uint8) * 255)
        return [*outlined, np.repeat(mask_cell[..., None], 3, axis=2)]

    def write_preview(self, previews: list[list[np.ndarray]]) -> None:
        text = {"Description": "columns: CT, PET, mask"}
        write_png(self.preview_path(), montage(previews), text=text, overwrite=True)

    def datalist_fields(self) -> dict[str, Any]:
        return {
            "name": "synthetic_paired_petct",
            "description": "joint samples of the paired PET-CT bundle: CT in HU, PET in SUV, GTV mask {0, 1}",
            "modality": {"0": "CT", "1": "PT"},
            "labels": {"0": "background", "1": "GTV"},
        }
