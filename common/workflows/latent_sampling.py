"""Inference workflow of the latent diffusion bundle: sample latents, decode them (tiled if asked), write HU NIfTI.

Each sample is drawn in latent space with the chosen scheduler (the paper's 1000-step DDPM, or a fast sampler from
``common.schedulers``), divided by the latent scale factor stored with the weights, decoded by the autoencoder —
whole, or tile by tile with overlap (:func:`common.inferers.tiled_decoding.decode`) so volumes larger than memory
allows can be decoded — mapped from the training intensity range (default [-1, 1]; the HU window itself when the
model was trained in HU) back to Hounsfield units through the training window and written as
``<output_dir>/<case_id>/ct.nii.gz`` with the voxel size of the training grid (also stored with the weights), the
same layout the bundle reads, plus a ``dataset.json`` and a PNG montage of central slices. Existing files are never
overwritten: the run stops before any sampling if one of its outputs exists.

With ``tumour_channel`` (the ``tumour_channel.yaml`` overlay: an autoencoder of CT + tumour mask) the decoder's second
channel is the tumour mask on the model scale; it is read back by ``read_mask_channel`` (> the midpoint of
``intensity_range``) and written as ``<case_id>/masks/GTV-1.nii.gz`` (uint8; the primary and secondary tumours merged,
as the model was trained), listed in ``dataset.json`` as the entry's ``label`` and its ``masks``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from common.data.latent_scale import LatentStats
from common.data.phantoms.kinds import phantom_affine
from common.inferers.conditional import ConditionalDiffusionInferer
from common.inferers.per_sample import per_sample_noise
from common.inferers.tiled_decoding import decode, decode_tiled_tail, seamless_overlap, tail_receptive_radius
from common.io import atomic_write_nifti, save_preview_png
from common.transforms.ct import read_mask_channel
from common.transforms.validation import checked_range
from common.workflows.base import SamplingItem, UnconditionalSampling

__all__ = ["intensity_to_hu", "LatentSampling", "TUMOUR_MASK_NAME"]

TUMOUR_MASK_NAME = "GTV-1"
"""Structure name of a generated tumour mask (read back by the bundle's loaders as the primary tumour)."""


def intensity_to_hu(
    values: torch.Tensor, window: Sequence[float], intensity_range: Sequence[float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Map model intensities in ``intensity_range`` back to the HU ``window = (low, high)`` (clipped to the range).

    Training maps the HU window linearly onto ``intensity_range`` (config key ``intensity_range``: [-1, 1] by
    default; the window itself for a model trained in HU, then this only clips).

    Raises:
        ValueError: ``window`` or ``intensity_range`` is not (low, high) with high > low.
    """
    low, high = checked_range(window, "HU window")
    in_low, in_high = checked_range(intensity_range, "intensity_range")
    unit = (values.float().clamp(in_low, in_high) - in_low) / (in_high - in_low)
    return unit * (high - low) + low


class LatentSampling(UnconditionalSampling):
    """Generate ``num_samples`` CT volumes from a latent diffusion model and write them (see the module docstring).

    Args:
        diffusion: trained latent denoiser (eval mode, weights loaded).
        autoencoder: trained ``AutoencoderKL`` (eval mode, weights loaded).
        stats: :class:`common.data.latent_scale.LatentStats` loaded from the diffusion checkpoint (scale factor,
            pixdim).
        inferer: a :class:`common.inferers.conditional.ConditionalDiffusionInferer` (unconditional:
            ``mode="crossattn"``).
        scheduler: sampling scheduler.
        latent_shape: (C, *spatial) of one latent (e.g. (3, 32, 32, 32) for 128^3 volumes).
        hu_window: the (low, high) HU window mapped to ``intensity_range`` in training.
        intensity_range: the (low, high) model intensities the HU window was mapped to in training: (-1, 1) by
            default, the HU window itself for a model trained in HU (``configs/hu_scale.yaml``).
        num_samples: number of volumes.
        batch_size: latents sampled together (decoding is one volume at a time).
        tiled_decode: decode tile by tile (:func:`common.inferers.tiled_decoding.decode_tiled_tail`: the decoder's
            attention head on the whole latent, its convolutional tail in tiles of ``decode_roi_size`` latent voxels)
            instead of whole.
        decode_roi_size: tile size in latent voxels.
        decode_overlap: tile overlap fraction in [0, 1); None: the least that keeps tiles seam-free (twice the
            tail's receptive radius, measured once).
        decode_group_norm: ``"whole"``: GroupNorm with whole-volume statistics (tiled == whole decoding to float
            precision, about 4x slower); ``"tile"``: each tile's own statistics (faster, approximate).
        tumour_channel: the autoencoder decodes CT + tumour mask (two channels); the mask is written too.
        device: torch device of the diffusion model and the latents.
        num_inference_steps, output_dir, seed, preview_samples, verbose, overwrite, run_fields: as for
            :class:`common.workflows.base.SamplingWorkflow`.
    """

    unit = "volume"

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
        intensity_range: Sequence[float] = (-1.0, 1.0),
        tiled_decode: bool = False,
        decode_roi_size: Sequence[int] | int = 16,
        decode_overlap: float | None = None,
        decode_group_norm: str = "whole",
        tumour_channel: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(scheduler, num_inference_steps, output_dir, **options)
        if len(latent_shape) < 3:
            raise ValueError(f"latent_shape must be (C, *spatial), got {tuple(latent_shape)}")
        intensity_to_hu(torch.zeros(1), hu_window, intensity_range)  # validates the window and the range
        if not bool(stats.computed):
            raise ValueError(
                "the diffusion checkpoint has no latent scale factor ('stats' entry not computed): it was not written "
                "by this bundle's train_diffusion stage"
            )
        self.diffusion = diffusion
        self.autoencoder = autoencoder
        self.stats = stats
        self.inferer = inferer
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.hu_window = tuple(float(w) for w in hu_window)
        self.intensity_range = tuple(float(v) for v in intensity_range)
        self.tiled_decode = bool(tiled_decode)
        self.decode_roi_size = decode_roi_size
        self.decode_overlap = None if decode_overlap is None else float(decode_overlap)
        self.decode_group_norm = decode_group_norm
        self.tumour_channel = bool(tumour_channel)
        self._margin: int | None = None

    def image_path(self, index: int) -> Path:
        return self.output_dir / self.case_id(index) / "ct.nii.gz"

    def mask_path(self, index: int) -> Path:
        """The tumour mask of sample ``index`` (written with ``tumour_channel`` only)."""
        return self.output_dir / self.case_id(index) / "masks" / f"{TUMOUR_MASK_NAME}.nii.gz"

    def sample_paths(self, item: SamplingItem, index: int) -> list[Path]:
        return [self.image_path(index)] + ([self.mask_path(index)] if self.tumour_channel else [])

    def entry_of(self, item: SamplingItem, index: int) -> dict[str, Any]:
        entry = super().entry_of(item, index)
        return {**entry, "label": str(self.mask_path(index))} if self.tumour_channel else entry

    def manifest_fields(self) -> dict[str, Any]:
        """The latent shape, the HU window, the latent scale and grid, how latents are decoded, and the tumour
        channel when there is one."""
        return {
            "latent_shape": self.latent_shape,
            "hu_window": self.hu_window,
            "intensity_range": self.intensity_range,
            "scale_factor": float(self.stats.scale_factor),
            "pixdim": [float(p) for p in self.stats.pixdim],
            "tiled_decode": self.tiled_decode,
            "decode_roi_size": self.decode_roi_size,
            "decode_overlap": self.decode_overlap,
            "decode_group_norm": self.decode_group_norm,
            **({"tumour_channel": True} if self.tumour_channel else {}),  # a base run's manifest stays as before
        }

    def modules(self) -> Sequence[nn.Module]:
        return (self.diffusion, self.autoencoder)

    @torch.no_grad()
    def sample_latents(self, first: int, count: int) -> torch.Tensor:
        """``count`` latents (count, *latent_shape), in the autoencoder's units (scale factor undone)."""
        generators = self.sample_generators(SamplingItem(), first, count)
        noise = per_sample_noise((count, *self.latent_shape), generators, self.device)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        latents = self.inferer.sample(
            noise, self.diffusion, self.scheduler, conditioning=None, generator=generators, verbose=self.verbose
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
        """Decode (B, C, *latent) latents one volume at a time into (B, 1, *spatial) images in model intensities."""
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
        """``count`` volumes (count, 1, *spatial) in HU; with ``tumour_channel`` (count, 2, *spatial): the CT in HU
        and the tumour mask (0 / 1).

        Raises:
            ValueError: the autoencoder decodes another number of channels than ``tumour_channel`` implies.
        """
        decoded = self.decode(self.sample_latents(first, count))
        expected = 2 if self.tumour_channel else 1
        if decoded.shape[1] != expected:
            raise ValueError(
                f"config key 'tumour_channel' is {self.tumour_channel}: expected an autoencoder decoding {expected} "
                f"channel(s), but it decodes {decoded.shape[1]} (key 'image_channels'; tumour_channel.yaml sets both)"
            )
        ct = intensity_to_hu(decoded[:, :1], self.hu_window, self.intensity_range)
        if not self.tumour_channel:
            return ct
        return torch.cat([ct, read_mask_channel(decoded[:, 1:], self.intensity_range).to(ct.dtype)], dim=1)

    def sample_item(self, item: SamplingItem, first: int, count: int) -> torch.Tensor:
        return self.generate(first, count)

    def write_item(self, item: SamplingItem, index: int, sample: torch.Tensor) -> None:
        """One int16 HU volume with the training grid's voxel size (stored with the weights); with
        ``tumour_channel`` also its uint8 tumour mask (written first: the CT's file marks the sample complete)."""
        affine = phantom_affine(sample.shape[1:], [float(p) for p in self.stats.pixdim])
        if self.tumour_channel:
            atomic_write_nifti(sample[1:2], affine, self.mask_path(index), dtype="uint8", overwrite=self.overwrite)
        atomic_write_nifti(sample[:1], affine, self.image_path(index), dtype="int16", overwrite=self.overwrite)

    def write_preview(self, previews: list[tuple[str, torch.Tensor]]) -> None:
        save_preview_png(self.preview_path(), previews, value_range=self.hu_window, overwrite=True)

    def datalist_fields(self) -> dict[str, Any]:
        what = "CT in HU and tumour mask" if self.tumour_channel else "CT in HU"
        return {"name": "synthetic", "description": f"samples of the latent_ct bundle ({what})"}

    def datalist_entry(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """As the bundle's own datalists: a CT ``image`` and its structure ``masks`` (the tumour with
        ``tumour_channel``, else none)."""
        entry = super().datalist_entry(entry)
        return {**entry, "masks": {TUMOUR_MASK_NAME: entry["label"]} if self.tumour_channel else {}}
