"""Unconditional 2D synthesis (the ``swin_ddpm`` bundle): sampling to NIfTI + PNG, and the MT-DDPM evaluation.

:class:`ImageSampling` draws ``num_samples`` images from noise with any sampler of :mod:`common.schedulers` (the
paper's 500 respaced learned-variance steps, or DDIM / DPM-Solver++ on the first C channels), maps them from the
model range (``intensity_range``) to the output units (``output_window``: 0-255 for radiographs, HU for CT) and writes
``<output_dir>/synthetic_seed<seed>_<i>.nii.gz`` with the training pixel size, a ``dataset.json`` and a PNG montage.
Existing files are never overwritten (see :class:`common.workflows.base.SamplingWorkflow`).

:class:`ImageEvaluation` compares the samples with the real images (both in the model range): the paper's IS, FID
(with a configured feature network), FDS and DS (:class:`common.metrics.DistributionMetrics`), and the mean pairwise
SSIM of each set (diversity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.inferers.conditional import ConditionalDiffusionInferer
from common.inferers.per_sample import per_sample_noise
from common.io import atomic_write_nifti, read_nifti, save_preview_png
from common.metrics.distribution import DistributionMetrics
from common.metrics.image import mean_pairwise, ssim
from common.transforms.validation import checked_range
from common.workflows.base import EvaluationWorkflow, SamplingItem, UnconditionalSampling, read_sample_datalist
from common.workflows.latent_sampling import intensity_to_hu

__all__ = ["slice_affine_2d", "ImageSampling", "ImageEvaluation"]


def slice_affine_2d(spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """4x4 RAS affine of a 2D image: ``pixdim`` on the diagonal, the image centred on the origin, 1 mm thick."""
    affine = np.diag([float(pixdim[0]), float(pixdim[1]), 1.0, 1.0])
    affine[:2, 3] = [-(int(n) - 1) / 2.0 * float(s) for n, s in zip(spatial_size, pixdim)]
    return affine


class ImageSampling(UnconditionalSampling):
    """Generate ``num_samples`` 2D images from noise and write them (module docstring).

    Args:
        network: trained denoiser (weights loaded).
        inferer: a :class:`ConditionalDiffusionInferer` in ``crossattn`` mode (no condition).
        scheduler: sampling scheduler.
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        image_shape: (C, H, W) of one sample.
        pixdim: pixel size (mm) written into the NIfTI affine.
        output_dir: output folder.
        intensity_range: (low, high) model range of the training images.
        output_window: (low, high) output values the model range maps to (e.g. [0, 255], [-1024, 3012] HU).
        options: ``num_samples``, ``seed``, ``device``, ``batch_size``, ``overwrite``, ``run_fields``, ... of
            :class:`SamplingWorkflow`.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: ConditionalDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        image_shape: Sequence[int],
        pixdim: Sequence[float],
        output_dir: str,
        intensity_range: Sequence[float] = (-1.0, 1.0),
        output_window: Sequence[float] = (-1.0, 1.0),
        **options: Any,
    ) -> None:
        super().__init__(scheduler, num_inference_steps, output_dir, **options)
        if len(image_shape) != 3:
            raise ValueError(f"config key 'image_shape': expected (C, H, W), got {list(image_shape)}")
        self.intensity_range = checked_range(intensity_range, "intensity_range")
        self.output_window = checked_range(output_window, "output_window")
        self.network = network
        self.inferer = inferer
        self.image_shape = tuple(int(s) for s in image_shape)
        self.pixdim = tuple(float(p) for p in pixdim)

    def modules(self) -> Sequence[nn.Module]:
        return (self.network,)

    def image_path(self, index: int) -> Path:
        return self.output_dir / f"{self.case_id(index)}.nii.gz"

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "image_shape": self.image_shape,
            "pixdim": list(self.pixdim),
            "intensity_range": list(self.intensity_range),
            "output_window": list(self.output_window),
        }

    @torch.no_grad()
    def sample_item(self, item: SamplingItem, first: int, count: int) -> torch.Tensor:
        """``count`` samples (count, C, H, W) in output units."""
        generators = self.sample_generators(item, first, count)
        noise = per_sample_noise((count, *self.image_shape), generators, self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        images = self.inferer.sample(
            noise, self.network, self.scheduler, conditioning=None, generator=generators, verbose=self.verbose
        )
        return intensity_to_hu(images.cpu(), self.output_window, self.intensity_range)

    def write_item(self, item: SamplingItem, index: int, sample: torch.Tensor) -> None:
        affine = slice_affine_2d(sample.shape[1:], self.pixdim)
        atomic_write_nifti(sample, affine, self.image_path(index), dtype="float32", overwrite=self.overwrite)

    def write_preview(self, previews: list[tuple[str, torch.Tensor]]) -> None:
        save_preview_png(self.preview_path(), previews, spatial_dims=2, value_range=self.output_window, overwrite=True)

    def datalist_fields(self) -> dict[str, Any]:
        return {"name": "synthetic", "description": "unconditional 2D samples of the swin_ddpm bundle"}


class ImageEvaluation(EvaluationWorkflow):
    """MT-DDPM's metrics of the samples of an :class:`ImageSampling` run against the real images.

    Args:
        real: preprocessed real items (``image`` (C, H, W) in the model range).
        sample_dir: the inference ``output_dir`` (its ``dataset.json``).
        output_dir: report folder.
        intensity_range: the model range; samples are mapped back to it from ``output_window``.
        output_window: the units the samples were written in.
        distribution: :class:`DistributionMetrics` (2D), or None.
        max_samples: evaluate at most this many samples.
    """

    def __init__(
        self,
        real: Sequence[Mapping[str, Any]],
        sample_dir: str,
        output_dir: str,
        intensity_range: Sequence[float] = (-1.0, 1.0),
        output_window: Sequence[float] = (-1.0, 1.0),
        distribution: DistributionMetrics | None = None,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(output_dir, title="swin_ddpm: samples against real images", max_samples=max_samples)
        if len(real) == 0:
            raise ValueError("config key 'dataset_dir': no real image to compare the samples with")
        self.real = real
        self.sample_dir = sample_dir
        self.intensity_range = checked_range(intensity_range, "intensity_range")
        self.output_window = checked_range(output_window, "output_window")
        self.distribution = distribution

    def samples(self) -> torch.Tensor:
        """The samples (N, C, H, W) mapped back to the model range."""
        entries = self.limit(read_sample_datalist(self.sample_dir, ["image"], check_files=True))
        images = torch.stack([read_nifti(entry["image"]).float()[None] for entry in entries])
        (low, high), (in_low, in_high) = self.output_window, self.intensity_range
        return (images.clamp(low, high) - low) / (high - low) * (in_high - in_low) + in_low

    def evaluate(self) -> dict[str, Any]:
        real = torch.stack([torch.as_tensor(self.real[i]["image"]).float() for i in range(len(self.real))])
        fake = self.samples()
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(
                f"samples of shape {tuple(fake.shape[1:])} do not match the real images {tuple(real.shape[1:])}: "
                "evaluate with the configs (and overlays) the samples were drawn with"
            )
        data_range = self.intensity_range[1] - self.intensity_range[0]
        window = max(1, min(7, min(real.shape[2:]) - (1 - min(real.shape[2:]) % 2)))
        similarity = partial(ssim, data_range=data_range, win_size=window)
        results: dict[str, Any] = {"samples": len(fake), "real_images": len(real)}
        for name, images in (("synthetic", fake), ("real", real)):
            if len(images) >= 2:
                results[f"diversity_ssim_{name} (mean pairwise SSIM)"] = mean_pairwise(similarity, images)
        if self.distribution is not None:
            results["distribution"] = self.distribution(real, fake)
        return results

    def summary(self, results: Mapping[str, Any]) -> str:
        return f"evaluated {results['samples']} sample(s) against {results['real_images']} real image(s)"
