"""Inference workflow of the latent diffusion bundle: sample latents, decode them (tiled if asked), write HU NIfTI.

Each sample is drawn in latent space with the chosen scheduler (the paper's 1000-step DDPM, or a fast sampler from
``common.schedulers``), divided by the latent scale factor stored with the weights, decoded by the autoencoder —
whole, or tile by tile with overlap (:func:`common.inferers.tiled_decoding.decode`) so volumes larger than memory allows can be
decoded — mapped from [-1, 1] back to Hounsfield units through the training window and written as
``<output_dir>/<case_id>/ct.nii.gz`` with the voxel size of the training grid (also stored with the weights), the
same layout the bundle reads, plus a ``dataset.json`` and a PNG montage of central slices. Existing files are never
overwritten: the run stops before any sampling if one of its outputs exists.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.data.latent_scale import LatentStats
from common.data.phantoms.kinds import phantom_affine
from common.inferers.conditional import ConditionalDiffusionInferer
from common.inferers.tiled_decoding import decode, decode_tiled_tail, seamless_overlap, tail_receptive_radius
from common.io import atomic_write_nifti, atomic_write_text, save_preview_png
from common.workflows.sampling import check_sampler_steps

__all__ = ["from_unit_range_hu", "LatentSampling"]

logger = logging.getLogger(__name__)


def from_unit_range_hu(values: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """Map [-1, 1] back to the HU ``window = (low, high)`` the training data were scaled from (clipped)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"HU window must be (low, high) with high > low, got {tuple(window)}")
    return (values.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * (high - low) + low


class LatentSampling:
    """Generate ``num_samples`` CT volumes from a latent diffusion model and write them (see the module docstring).

    Args:
        diffusion: trained latent denoiser (eval mode, weights loaded).
        autoencoder: trained ``AutoencoderKL`` (eval mode, weights loaded).
        stats: :class:`common.data.latent_scale.LatentStats` loaded from the diffusion checkpoint (scale factor, pixdim).
        inferer: a :class:`common.inferers.conditional.ConditionalDiffusionInferer` (unconditional: ``mode="crossattn"``).
        scheduler: sampling scheduler.
        num_inference_steps: steps given to ``scheduler.set_timesteps``.
        latent_shape: (C, *spatial) of one latent (e.g. (3, 32, 32, 32) for 128^3 volumes).
        output_dir: output folder.
        hu_window: the (low, high) HU window mapped to [-1, 1] in training.
        num_samples: number of volumes.
        seed: base seed; a given seed (and ``batch_size``) gives the same samples.
        device: torch device of the diffusion model and the latents.
        batch_size: latents sampled together (decoding is one volume at a time).
        tiled_decode: decode tile by tile (:func:`common.inferers.tiled_decoding.decode_tiled_tail`: the decoder's attention head on
            the whole latent, its convolutional tail in tiles of ``decode_roi_size`` latent voxels) instead of whole.
        decode_roi_size: tile size in latent voxels.
        decode_overlap: tile overlap fraction in [0, 1); None: the least that keeps tiles seam-free (twice the
            tail's receptive radius, measured once).
        decode_group_norm: ``"whole"``: GroupNorm with whole-volume statistics (tiled == whole decoding to float
            precision, about 4x slower); ``"tile"``: each tile's own statistics (faster, approximate).
        preview_samples: rows of the PNG montage.
        verbose: progress bar.
    """

    def __init__(
        self,
        diffusion: nn.Module,
        autoencoder: nn.Module,
        stats: LatentStats,
        inferer: ConditionalDiffusionInferer,
        scheduler: Scheduler,
        num_inference_steps: int,
        latent_shape: Sequence[int],
        output_dir: str,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        num_samples: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        tiled_decode: bool = False,
        decode_roi_size: Sequence[int] | int = 16,
        decode_overlap: float | None = None,
        decode_group_norm: str = "whole",
        preview_samples: int = 4,
        verbose: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        if len(latent_shape) < 3:
            raise ValueError(f"latent_shape must be (C, *spatial), got {tuple(latent_shape)}")
        check_sampler_steps(scheduler, num_inference_steps)
        from_unit_range_hu(torch.zeros(1), hu_window)  # validates the window
        if not bool(stats.computed):
            raise ValueError(
                "the diffusion checkpoint has no latent scale factor ('stats' entry not computed): it was not written "
                "by this bundle's train_diffusion stage"
            )
        self.diffusion = diffusion
        self.autoencoder = autoencoder
        self.stats = stats
        self.inferer = inferer
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_dir = Path(output_dir)
        self.hu_window = tuple(float(w) for w in hu_window)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.tiled_decode = bool(tiled_decode)
        self.decode_roi_size = decode_roi_size
        self.decode_overlap = None if decode_overlap is None else float(decode_overlap)
        self.decode_group_norm = decode_group_norm
        self._margin: int | None = None
        self.preview_samples = int(preview_samples)
        self.verbose = verbose

    def case_id(self, index: int) -> str:
        return f"synthetic_seed{self.seed}_{index:04d}"

    def image_path(self, index: int) -> Path:
        return self.output_dir / self.case_id(index) / "ct.nii.gz"

    def preview_path(self) -> Path:
        return self.output_dir / f"preview_seed{self.seed}.png"

    def check_outputs_free(self) -> None:
        planned = [self.preview_path()] + [self.image_path(i) for i in range(self.num_samples)]
        existing = [str(p) for p in planned if p.exists()]
        if existing:
            raise FileExistsError(
                f"output_dir '{self.output_dir}' already holds {len(existing)} of this run's files (e.g. {existing[:3]});"
                " samples are never overwritten: choose another --output_dir or --seed"
            )

    @torch.no_grad()
    def sample_latents(self, first: int, count: int) -> torch.Tensor:
        """``count`` latents (count, *latent_shape), in the autoencoder's units (scale factor undone)."""
        seed = zlib.crc32(f"{self.seed}/{first}".encode())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn((count, *self.latent_shape), generator=generator, device=self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        latents = self.inferer.sample(
            noise, self.diffusion, self.scheduler, conditioning=None, generator=generator, verbose=self.verbose
        )
        return latents / self.stats.scale_factor.to(latents.device)

    def tile_settings(self, latent_size: Sequence[int]) -> tuple[list[int], list[float], int]:
        """(tile size, overlap, margin) per axis of tiled decoding for latents of ``latent_size``."""
        if self._margin is None:
            self._margin = tail_receptive_radius(self.autoencoder, spatial_dims=len(latent_size))
        rois = self.decode_roi_size if isinstance(self.decode_roi_size, Sequence) else [self.decode_roi_size]
        rois = [min(int(r), int(n)) for r, n in zip(list(rois) * len(latent_size), latent_size)]
        for roi, size in zip(rois, latent_size):
            if roi < int(size) and roi <= 2 * self._margin:
                raise ValueError(
                    f"config key 'decode_roi_size': tiles of {roi} latent voxels leave no trusted core with the "
                    f"decoder's receptive radius {self._margin}; use more than {2 * self._margin}"
                )
        least = [seamless_overlap(roi, self._margin) for roi in rois]
        overlap = least if self.decode_overlap is None else [max(self.decode_overlap, m) for m in least]
        return rois, overlap, self._margin

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode (B, C, *latent) latents one volume at a time into (B, 1, *spatial) images in [-1, 1] units."""
        images = []
        for z in latents:
            if self.tiled_decode:
                rois, overlap, margin = self.tile_settings(z.shape[1:])
                image = decode_tiled_tail(
                    self.autoencoder, z[None], rois, overlap, margin=margin, group_norm=self.decode_group_norm
                )
            else:
                image = decode(self.autoencoder, z[None])
            images.append(image.cpu())
        return torch.cat(images)

    def generate(self, first: int, count: int) -> torch.Tensor:
        """``count`` volumes (count, 1, *spatial) in HU."""
        return from_unit_range_hu(self.decode(self.sample_latents(first, count)), self.hu_window)

    def run(self) -> list[dict[str, Any]]:
        """Sample and write every volume; returns the written cases (``case_id``, ``image``)."""
        self.check_outputs_free()
        self.diffusion.eval()
        self.autoencoder.eval()
        pixdim = [float(p) for p in self.stats.pixdim]
        written: list[dict[str, Any]] = []
        preview: list[tuple[str, torch.Tensor]] = []
        start = time.perf_counter()
        for first in range(0, self.num_samples, self.batch_size):
            count = min(self.batch_size, self.num_samples - first)
            volumes = self.generate(first, count)
            for offset, volume in enumerate(volumes):
                index = first + offset
                affine = phantom_affine(volume.shape[1:], pixdim)
                path = atomic_write_nifti(volume, affine, self.image_path(index), dtype="int16")
                written.append({"case_id": self.case_id(index), "image": str(path)})
                if len(preview) < self.preview_samples:
                    preview.append((self.case_id(index), volume))
            logger.info(f"{first + count}/{self.num_samples} volume(s) written to '{self.output_dir}'")
        self.finish(written, preview, time.perf_counter() - start)
        return written

    def finish(self, written: list[dict[str, Any]], preview: list, seconds: float) -> None:
        datalist = self.output_dir / "dataset.json"
        previous = json.loads(datalist.read_text()).get("training", []) if datalist.is_file() else []
        known = {c["case_id"] for c in written}
        entries = [e for e in previous if e.get("case_id") not in known] + [
            {"case_id": c["case_id"], "image": str(Path(c["image"]).relative_to(self.output_dir)), "masks": {}}
            for c in written
        ]
        content = {
            "name": "synthetic",
            "description": "samples of the latent_ct bundle (CT in HU)",
            "numTraining": len(entries),
            "training": entries,
        }
        atomic_write_text(datalist, json.dumps(content, indent=2), overwrite=True)
        save_preview_png(self.preview_path(), preview, value_range=self.hu_window)
        logger.info(
            f"wrote {len(written)} volume(s) in {seconds:.1f} s to '{self.output_dir}' "
            f"(datalist '{datalist}', preview '{self.preview_path()}')"
        )
