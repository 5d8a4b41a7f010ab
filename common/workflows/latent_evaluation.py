"""Evaluation of the latent CT bundle with the paper's metrics: autoencoder reconstruction and sample quality.

Reconstruction (held-out real cases through the autoencoder, thesis Tables 6.1/6.2): MSE in HU^2 (and the L1 in HU),
PSNR (dB, over the HU window), SSIM, the KL divergence of the posterior and the perceptual distance. The volumes are in
the model's intensities (``intensity_range``: [-1, 1] by default, the HU window for a model trained in HU); every HU
figure is converted through the window, so both scales report in the same units.

Samples (thesis Sec. 6.2): a 2D-slice FID whose features are the bundle's own autoencoder latents (each latent slice
flattened, as the thesis did with its VAE features; ``fid_pool`` averages slices down to ``pool x pool`` first for
small sets, where thousands of features would make the covariance singular), SSIM and MS-SSIM diversity (mean over
pairs of samples, lower is more diverse; also reported for the real set as the reference), and a t-SNE map of real
versus synthetic latents written as PNG (thesis Fig. 6.12). Optionally (``distribution``) the distribution metrics of
the samples against the real volumes: a 3D FID (Med-DDPM's 3D-FID with the paper's network, else named after the
project-trained encoder), FDS and DS (:class:`common.metrics.distribution.DistributionMetrics`). JSON + markdown report
via :func:`common.metrics.report.write_report`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice
from torch import nn

from common.losses.autoencoder import kl_divergence
from common.metrics.distribution import DistributionMetrics
from common.metrics.fid import fid_2d_slices
from common.metrics.image import mean_pairwise, ms_ssim, psnr, ssim
from common.metrics.tsne import scatter_png, tsne
from common.transforms.ct import read_mask_channel
from common.transforms.validation import checked_range
from common.workflows.base import EvaluationWorkflow, read_sample_datalist

__all__ = ["list_samples", "LatentEvaluation"]

logger = logging.getLogger(__name__)


def _check_volume_entry(entry: Mapping[str, Any], where: str) -> None:
    if not isinstance(entry["image"], str):
        raise ValueError(f"{where}: expected 'image': one CT path (as LatentSampling writes), found {entry}")


def list_samples(sample_dir: str | Path, masks: bool = False) -> list[dict[str, Any]]:
    """The volumes an inference run wrote: ``dataset.json`` entries of ``sample_dir`` (``case_id``, ``image``; with
    ``masks`` also the entry's ``masks`` ``{name: path}``, which ``tumour_channel.yaml``'s sampler writes).

    Raises:
        FileNotFoundError: ``sample_dir`` or its ``dataset.json`` is missing, or a listed file does not exist.
        ValueError: the datalist lists no volume, or is malformed; with ``masks``, an entry without masks (samples of
            CT-only weights).
    """
    entries = read_sample_datalist(
        sample_dir, ("image",), check_files=True, check_entry=_check_volume_entry, path_keys=("image", "masks")
    )
    if not entries:
        raise ValueError(f"config key 'sample_dir': '{Path(sample_dir) / 'dataset.json'}' lists no samples")
    samples = []
    for entry in entries:
        sample = {"case_id": entry.get("case_id", Path(entry["image"]).parent.name), "image": entry["image"]}
        if masks:
            if not entry.get("masks"):
                raise ValueError(
                    f"config key 'sample_dir': '{Path(sample_dir) / 'dataset.json'}' lists '{entry['image']}' without "
                    "tumour 'masks'; tumour_channel: true evaluates samples written with tumour_channel.yaml"
                )
            sample["masks"] = entry["masks"]
        samples.append(sample)
    return samples


def _ssim_window(spatial_shape: Sequence[int], largest: int = 7) -> int:
    """The largest odd SSIM window <= ``largest`` that fits the smallest spatial size (7 as for 128^3 MS-SSIM)."""
    smallest = int(min(spatial_shape))
    return max(1, min(largest, smallest if smallest % 2 else smallest - 1))


class LatentEvaluation(EvaluationWorkflow):
    """Compute the paper's metrics and write ``report.json`` / ``report.md`` and ``tsne.png`` to ``output_dir``.

    Args:
        autoencoder: the trained ``AutoencoderKL`` (eval mode).
        held_out: preprocessed held-out real items (dicts with ``image`` (1, *spatial) in ``intensity_range``) for
            the reconstruction metrics.
        real: preprocessed real items (all cases) for the sample metrics.
        samples: preprocessed generated items, same format; None or empty skips the sample metrics.
        output_dir: report folder (the report's title is 'latent_ct evaluation').
        hu_window: the training HU window (MSE is reported in HU^2, L1 in HU).
        intensity_range: the model intensities the HU window was mapped to in training ((-1, 1) by default; the HU
            window itself for a model trained in HU).
        perceptual_loss: distance (a, b) -> scalar on volumes (e.g. ``FakeVolumePerceptualLoss``), or None.
        fid_axis: axis the FID slices are cut along (-1: axial).
        fid_pool: average latent slices to ``pool x pool`` before flattening (None: full slices, the paper).
        tsne_perplexity: t-SNE perplexity, lowered to (N - 1) / 3 for small sets.
        device: where the autoencoder runs.
        seed: seed of the t-SNE initialisation.
        distribution: distribution metrics of the samples against the real volumes, or None.
        mask_channel: the channel of the volumes that holds the tumour mask on the model's scale (weights of
            ``tumour_channel.yaml``: CT + tumour), or None (CT only). With it the image metrics (reconstruction,
            diversity, distribution) read the other channels, the reconstruction also reports the tumour Dice of the
            decoded mask (``channel > the range's midpoint``), the samples how many carry a tumour and its size;
            the latents (FID, t-SNE) are the autoencoder's, of both channels.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        held_out: Sequence[Mapping[str, Any]],
        real: Sequence[Mapping[str, Any]],
        samples: Sequence[Mapping[str, Any]] | None,
        output_dir: str,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        intensity_range: Sequence[float] = (-1.0, 1.0),
        perceptual_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        fid_axis: int = -1,
        fid_pool: int | None = None,
        tsne_perplexity: float = 30.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        distribution: DistributionMetrics | None = None,
        mask_channel: int | None = None,
    ) -> None:
        if not held_out:
            raise ValueError("the held-out set is empty: no real case to measure the reconstruction on")
        if not real:
            raise ValueError("the real set is empty")
        if fid_pool is not None and int(fid_pool) < 1:
            raise ValueError(f"fid_pool must be a positive integer or None, got {fid_pool}")
        super().__init__(output_dir, title="latent_ct evaluation")
        self.autoencoder = autoencoder.eval()
        self.held_out = held_out
        self.real = real
        self.samples = samples or []
        self.hu_window = checked_range(hu_window, "hu_window")
        self.intensity_range = checked_range(intensity_range, "intensity_range")
        self.data_range = self.intensity_range[1] - self.intensity_range[0]
        self.hu_per_unit = (self.hu_window[1] - self.hu_window[0]) / self.data_range
        self.perceptual_loss = perceptual_loss
        self.fid_axis = int(fid_axis)
        self.fid_pool = None if fid_pool is None else int(fid_pool)
        self.tsne_perplexity = float(tsne_perplexity)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.distribution = distribution
        self.mask_channel = None if mask_channel is None else int(mask_channel)
        network = None if distribution is None else distribution.feature_network
        if self.mask_channel is not None and network is not None and not network.paper:
            raise ValueError(
                f"config key 'fid_network': the project FID network ({network.name}) reads what the autoencoder "
                "reads, CT + tumour, while the 3D-FID reads the CT alone; use fid_network: paper or null with "
                "tumour_channel weights (the latent FID, FDS and DS are reported either way)"
            )

    def image_channels(self, volumes: torch.Tensor) -> torch.Tensor:
        """The image channels of (B, C, *spatial) volumes (all but ``mask_channel``)."""
        if self.mask_channel is None:
            return volumes
        keep = [c for c in range(volumes.shape[1]) if c != self.mask_channel % volumes.shape[1]]
        return volumes[:, keep]

    def tumour(self, volumes: torch.Tensor) -> torch.Tensor:
        """The tumour masks (B, 1, *spatial) read back from ``mask_channel`` (> the intensity range's midpoint)."""
        channel = self.mask_channel % volumes.shape[1]
        return read_mask_channel(volumes[:, channel : channel + 1], self.intensity_range)

    @staticmethod
    def stack(items: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """The ``image`` of every item, stacked: (N, 1, *spatial)."""
        volumes = [torch.as_tensor(items[i]["image"]).float() for i in range(len(items))]
        shapes = {tuple(v.shape) for v in volumes}
        if len(shapes) != 1:
            raise ValueError(f"all volumes must share one (C, H, W, D) after preprocessing, got {sorted(shapes)}")
        return torch.stack(volumes)

    @torch.no_grad()
    def encode(self, volumes: torch.Tensor) -> torch.Tensor:
        """Posterior means (B, C, *latent) of (B, 1, *spatial) volumes, one at a time."""
        return torch.cat([self.autoencoder.encode(v[None].to(self.device))[0].cpu() for v in volumes])

    @torch.no_grad()
    def reconstruction_metrics(self) -> dict[str, float]:
        rows: dict[str, list[float]] = {
            "mse_hu2": [],
            "l1_hu": [],
            "psnr_db": [],
            "ssim": [],
            "kl": [],
            "perceptual": [],
            "tumour_dice": [],
        }
        for volume in self.stack(self.held_out):
            x = volume[None].to(self.device)
            reconstruction, z_mu, z_sigma = self.autoencoder(x)
            reconstruction = reconstruction.clamp(*self.intensity_range)
            if self.mask_channel is not None:
                dice = compute_dice(self.tumour(reconstruction.cpu()), self.tumour(x.cpu()), ignore_empty=False)
                rows["tumour_dice"].append(float(dice))
                x, reconstruction = self.image_channels(x), self.image_channels(reconstruction)
            x_cpu, r_cpu = x.cpu(), reconstruction.cpu()
            error_hu = (r_cpu - x_cpu) * self.hu_per_unit
            rows["mse_hu2"].append(float(error_hu.pow(2).mean()))
            rows["l1_hu"].append(float(error_hu.abs().mean()))
            rows["psnr_db"].append(float(psnr(x_cpu, r_cpu, data_range=self.data_range)[0]))
            rows["ssim"].append(
                float(ssim(x_cpu, r_cpu, data_range=self.data_range, win_size=_ssim_window(x.shape[2:]))[0])
            )
            rows["kl"].append(float(kl_divergence(z_mu, z_sigma)))
            if self.perceptual_loss is not None:
                rows["perceptual"].append(float(self.perceptual_loss(reconstruction, x)))
        return {key: float(np.mean(values)) for key, values in rows.items() if values} | {"cases": len(self.held_out)}

    def _slice_features(self, slices: torch.Tensor) -> torch.Tensor:
        if self.fid_pool is not None:
            slices = torch.nn.functional.adaptive_avg_pool2d(slices, self.fid_pool)
        return slices.flatten(1)

    def latent_fid(self, real_latents: torch.Tensor, fake_latents: torch.Tensor) -> float:
        """The 2D-slice FID of two sets of latents (B, C, *latent), e.g. from :meth:`encode`."""
        return fid_2d_slices(real_latents, fake_latents, self._slice_features, axis=self.fid_axis)

    def sample_metrics(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
        real_latents, fake_latents = self.encode(real), self.encode(fake)
        fid = self.latent_fid(real_latents, fake_latents)
        tumour_results = {}
        if self.mask_channel is not None:
            tumour_results = {
                f"{name}_{key}": value
                for name, volumes in (("synthetic", fake), ("real", real))
                for key, value in self.tumour_statistics(volumes).items()
            }
            real, fake = self.image_channels(real), self.image_channels(fake)
        ssim_fn = partial(ssim, data_range=self.data_range, win_size=_ssim_window(real.shape[2:]))
        ms_ssim_fn = partial(ms_ssim, data_range=self.data_range)
        results: dict[str, Any] = {"fid_2d_latent": fid, "samples": len(fake), "real_cases": len(real)}
        results.update(tumour_results)
        for name, volumes in (("synthetic", fake), ("real", real)):
            if len(volumes) >= 2:
                results[f"diversity_ssim_{name}"] = mean_pairwise(ssim_fn, volumes)
                results[f"diversity_ms_ssim_{name}"] = mean_pairwise(ms_ssim_fn, volumes)
        self.write_tsne(real_latents, fake_latents)
        results["tsne_png"] = str(self.tsne_path())
        if self.distribution is not None:
            results["distribution"] = self.distribution(real, fake)
        return results

    def tumour_statistics(self, volumes: torch.Tensor) -> dict[str, float]:
        """The fraction of ``volumes`` whose mask channel holds a tumour, and the median tumour size (voxels)."""
        sizes = self.tumour(volumes).flatten(1).sum(1)
        present = sizes[sizes > 0]
        return {
            "with_tumour_fraction": float((sizes > 0).float().mean()),
            "tumour_voxels_median": float(present.median()) if len(present) else 0.0,
        }

    def tsne_path(self) -> Path:
        return self.output_dir / "tsne_latents.png"

    def write_tsne(self, real_latents: torch.Tensor, fake_latents: torch.Tensor) -> None:
        points = torch.cat([real_latents, fake_latents]).flatten(1).double()
        n = points.shape[0]
        if n < 4:
            logger.warning(f"t-SNE needs at least 4 latents, got {n}: no tsne_latents.png")
            return
        perplexity = min(self.tsne_perplexity, (n - 1) / 3.0)
        embedding = tsne(points, perplexity=perplexity, seed=self.seed)
        groups = {"real": embedding[: len(real_latents)], "synthetic": embedding[len(real_latents) :]}
        scatter_png(self.tsne_path(), groups)

    def evaluate(self) -> dict[str, Any]:
        results: dict[str, Any] = {"reconstruction": self.reconstruction_metrics()}
        if self.samples:
            results["samples"] = self.sample_metrics(self.stack(self.real), self.stack(self.samples))
        else:
            logger.warning("no samples given: only the reconstruction metrics are computed")
        return results

    def summary(self, results: Mapping[str, Any]) -> str:
        samples = results.get("samples", {}).get("samples", 0)
        return f"evaluated the reconstruction of {results['reconstruction']['cases']} case(s) and {samples} sample(s)"
