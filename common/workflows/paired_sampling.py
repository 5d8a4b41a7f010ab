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

import json
import logging
import time
import zlib
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
    atomic_write_text,
    enlarge_nearest,
    enlargement_factor,
    montage,
    overlay_outline,
    window_uint8,
    write_png,
)
from common.workflows.sampling import check_sampler_steps

__all__ = ["to_unit_range", "from_unit_range", "slice_affine", "PairedSampling"]

logger = logging.getLogger(__name__)


FILE_SUFFIX = {"ct": "__CT", "pet": "__PT"}


def to_unit_range(values: torch.Tensor | np.ndarray, window: Sequence[float]) -> torch.Tensor:
    """Map ``window = (low, high)`` linearly to [-1, 1], clipping outside (the training intensity transform)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"intensity window must be (low, high) with high > low, got {tuple(window)}")
    values = torch.as_tensor(values, dtype=torch.float32)
    return ((values.clamp(low, high) - low) / (high - low) * 2.0 - 1.0).float()


def from_unit_range(values: torch.Tensor | np.ndarray, window: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`to_unit_range`: [-1, 1] back to ``window`` units (values outside [-1, 1] are clipped)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"intensity window must be (low, high) with high > low, got {tuple(window)}")
    values = torch.as_tensor(values, dtype=torch.float32).clamp(-1.0, 1.0)
    return (values + 1.0) / 2.0 * (high - low) + low


def slice_affine(spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """RAS affine of a 2D slice saved as an (H, W, 1) volume: ``pixdim`` spacing, centred on the world origin."""
    if len(pixdim) != 3 or len(spatial_size) != 2:
        raise ValueError(f"expected a 2D spatial_size and a 3-value pixdim, got {spatial_size} and {pixdim}")
    affine = np.diag([*(float(p) for p in pixdim), 1.0])
    affine[:2, 3] = [-(n - 1) / 2.0 * float(p) for n, p in zip(spatial_size, pixdim[:2])]
    return affine


class PairedSampling:
    """Sample ``num_samples`` (CT, PET, mask) triples and write them (see the module docstring).

    Args:
        network: ``nn.ModuleDict`` of trained denoisers keyed by modality (EMA weights loaded).
        inferer: :class:`common.inferers.paired.PairedDiffusionInferer`.
        scheduler: sampling scheduler (the full ancestral sampler, or a fast one such as DPM-Solver++).
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        output_dir: output folder.
        spatial_size: (H, W) of the samples (the training crop).
        pixdim: voxel size (mm) written in the affine, 3 values (the slice thickness last).
        ct_window: HU window the CT was scaled with in training; samples are mapped back through it.
        pet_window: SUV window of the PET, likewise.
        num_samples: number of triples.
        seed: base seed; a given seed (and ``batch_size``) gives the same samples.
        device: torch device.
        batch_size: triples generated together.
        reference_data: noise seeding: a sequence of real training-style items (dicts with ``ct``, ``pet`` and
            ``mask`` tensors of shape (1, H, W) in [-1, 1], optionally ``case_id`` and ``slice_index``).
        seed_fraction: noise seeding: the fraction of the schedule the references are noised to (paper 0.8-0.9);
            None samples from pure noise.
        refine_rounds: agreement refinement rounds after sampling (see ``PairedDiffusionInferer.sample``); 0 is off.
        refine_fraction: the fraction of the schedule each refinement round goes back to.
        modalities: network keys, in condition order. Default ("ct", "pet", "mask").
        preview_samples: rows of the PNG montage.
        verbose: progress bar.
    """

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
        num_samples: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        reference_data: Sequence[Mapping[str, Any]] | None = None,
        seed_fraction: float | None = None,
        modalities: Sequence[str] = ("ct", "pet", "mask"),
        preview_samples: int = 8,
        verbose: bool = True,
        refine_rounds: int = 0,
        refine_fraction: float = 0.1,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        check_sampler_steps(scheduler, num_inference_steps)
        if seed_fraction is not None and not reference_data:
            raise ValueError(
                "config key 'seed_fraction': noise seeding needs real reference triples ('reference_data'), got none"
            )
        if list(modalities) != ["ct", "pet", "mask"]:
            raise ValueError(f"modalities must be ['ct', 'pet', 'mask'] (the file layout), got {list(modalities)}")
        self.network = network
        self.inferer = inferer
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.output_dir = Path(output_dir)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.affine = slice_affine(self.spatial_size, pixdim)
        self.windows = {"ct": tuple(ct_window), "pet": tuple(pet_window)}
        for window in self.windows.values():
            from_unit_range(torch.zeros(1), window)  # validates the window
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
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
        self.preview_samples = int(preview_samples)
        self.verbose = verbose

    def sample_id(self, index: int) -> str:
        return f"synthetic_seed{self.seed}_{index:04d}"

    def paths(self, index: int) -> dict[str, Path]:
        case = self.sample_id(index)
        return {
            "ct": self.output_dir / "imagesTr" / f"{case}__CT.nii.gz",
            "pet": self.output_dir / "imagesTr" / f"{case}__PT.nii.gz",
            "mask": self.output_dir / "labelsTr" / f"{case}.nii.gz",
        }

    def preview_path(self) -> Path:
        return self.output_dir / f"preview_seed{self.seed}.png"

    def check_outputs_free(self) -> None:
        planned = [self.preview_path()] + [p for i in range(self.num_samples) for p in self.paths(i).values()]
        existing = [str(p) for p in planned if p.exists()]
        if existing:
            raise FileExistsError(
                f"output_dir '{self.output_dir}' already holds {len(existing)} of this run's files (e.g. {existing[:3]});"
                " samples are never overwritten: choose another --output_dir or --seed"
            )

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
        generator = torch.Generator(device=self.device).manual_seed(zlib.crc32(f"{self.seed}/{first}".encode()))
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        reference, names = self.references(first, count)
        samples = self.inferer.sample(
            (count, 1, *self.spatial_size),
            self.network,
            self.scheduler,
            generator=generator,
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

    def write(self, index: int, sample: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """Write one triple ((1, H, W) tensors in output units) as (H, W, 1) volumes sharing ``self.affine``."""
        paths = self.paths(index)
        for m in self.modalities:
            dtype = "uint8" if m == "mask" else "float32"
            atomic_write_nifti(sample[m][..., None], self.affine, paths[m], dtype=dtype)
        return {key: str(path) for key, path in paths.items()}

    def run(self) -> list[dict[str, Any]]:
        """Sample and write everything; returns the datalist entries written."""
        self.check_outputs_free()
        self.network.eval()
        start = time.perf_counter()
        written: list[dict[str, Any]] = []
        preview_rows: list[list[np.ndarray]] = []
        for first in range(0, self.num_samples, self.batch_size):
            count = min(self.batch_size, self.num_samples - first)
            samples, names = self.generate(first, count)
            values = self.to_output_units(samples)
            for k in range(count):
                index = first + k
                triple = {m: values[m][k] for m in self.modalities}
                paths = self.write(index, triple)
                entry = {"case_id": self.sample_id(index), "image": [paths["ct"], paths["pet"]], "label": paths["mask"]}
                if names[k] is not None:
                    entry["seeded_from"] = names[k]
                written.append(entry)
                if len(preview_rows) < self.preview_samples:
                    preview_rows.append(self.preview_row(triple))
        self.finish(written, preview_rows, time.perf_counter() - start)
        return written

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

    def finish(self, written: list[dict[str, Any]], preview_rows: list[list[np.ndarray]], seconds: float) -> None:
        datalist = self.output_dir / "dataset.json"
        previous: list[dict[str, Any]] = []
        if datalist.is_file():
            previous = json.loads(datalist.read_text()).get("training", [])
        known = {entry["case_id"] for entry in written}

        def relative(entry: dict[str, Any]) -> dict[str, Any]:
            out = dict(entry)
            out["image"] = [str(Path(p).relative_to(self.output_dir)) for p in entry["image"]]
            out["label"] = str(Path(entry["label"]).relative_to(self.output_dir))
            return out

        entries = [e for e in previous if e.get("case_id") not in known] + [relative(e) for e in written]
        description = {
            "name": "synthetic_paired_petct",
            "description": "joint samples of the paired PET-CT bundle: CT in HU, PET in SUV, GTV mask {0, 1}",
            "modality": {"0": "CT", "1": "PT"},
            "labels": {"0": "background", "1": "GTV"},
            "numTraining": len(entries),
            "training": entries,
        }
        atomic_write_text(datalist, json.dumps(description, indent=2) + "\n", overwrite=True)
        write_png(self.preview_path(), montage(preview_rows), text={"Description": "columns: CT, PET, mask"})
        logger.info(
            f"wrote {len(written)} triple(s) in {seconds:.1f} s to '{self.output_dir}' "
            f"(datalist '{datalist}', preview '{self.preview_path()}')"
        )
