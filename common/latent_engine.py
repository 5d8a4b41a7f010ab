"""Training pieces of the two-stage latent diffusion bundle (``latent_ct``): autoencoder losses and latent data.

Stage 1 trains MONAI's ``AutoencoderKL`` against a ``PatchDiscriminator`` with MONAI's ``AdversarialTrainer``. That
engine calls ``g_inferer(inputs, g_network)`` and expects the reconstruction alone (it feeds the output straight to
the discriminator), while ``AutoencoderKL.forward`` returns ``(reconstruction, z_mu, z_sigma)`` and the KL term
needs the last two. :class:`KLAutoencoderInferer` returns the reconstruction and keeps ``(z_mu, z_sigma)`` of its
last call, and :class:`AutoencoderLoss` (the engine's ``recon_loss_function``) reads them from it: the paper's
``L1 + 1e-6 KL + 1e-3 perceptual`` all in one term the engine adds to the adversarial one. The adversarial terms
(:class:`GeneratorAdversarialLoss`, :class:`DiscriminatorAdversarialLoss`) wrap MONAI's ``PatchAdversarialLoss``
with the paper's weight 1e-2 on the discriminator's last output.

Stage 2 trains a ``DiffusionModelUNet`` on latents. A frozen encoder gives the same posterior ``(mu, sigma)`` for
a case every epoch, so :class:`EncodeLatentd` (deterministic) computes it once and a MONAI ``CacheDataset`` keeps it;
:class:`SampleLatentd` (random) then draws ``z = mu + sigma * eps`` and scales it per iteration. That is the same
training distribution as encoding every iteration (what ``LatentDiffusionInferer`` does) at the cost of one encoder
pass per case instead of one per iteration. :class:`LatentStats` carries the latent scale factor (``1 / std`` of
the training latents, Rombach et al. 2022) and the voxel size of the training grid inside the checkpoint, so
sampling uses exactly what training used.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from monai.transforms import MapTransform, RandomizableTransform
from torch import nn

__all__ = [
    "AutoencoderLoss",
    "AutoencoderPrepareBatch",
    "adversarial_losses",
    "compute_scale_factor",
    "DiscriminatorAdversarialLoss",
    "EncodeLatentd",
    "FakeVolumePerceptualLoss",
    "GeneratorAdversarialLoss",
    "KLAutoencoderInferer",
    "LatentStats",
    "SampleLatentd",
    "kl_divergence",
]

logger = logging.getLogger(__name__)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent channels and voxels, averaged over the batch.

    ``0.5 * sum(mu^2 + sigma^2 - log(sigma^2) - 1)`` (Kingma & Welling 2014, appendix B), the term the paper weights
    by 1e-6.

    Raises:
        ValueError: shapes differ, or ``z_sigma`` has a non-positive value.
    """
    if z_mu.shape != z_sigma.shape:
        raise ValueError(
            f"z_mu and z_sigma must have the same shape, got {tuple(z_mu.shape)} and {tuple(z_sigma.shape)}"
        )
    if bool((z_sigma <= 0).any()):
        raise ValueError("z_sigma must be positive everywhere")
    per_element = z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1.0
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()


class KLAutoencoderInferer(Inferer):
    """``AutoencoderKL`` forward for ``AdversarialTrainer``: returns the reconstruction, keeps the posterior.

    After each call ``z_mu`` and ``z_sigma`` hold the posterior of that batch (with their graph), for
    :class:`AutoencoderLoss`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.z_mu: torch.Tensor | None = None
        self.z_sigma: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = network(inputs, *args, **kwargs)
        if not isinstance(output, (tuple, list)) or len(output) != 3:
            raise TypeError(
                "KLAutoencoderInferer expects a network returning (reconstruction, z_mu, z_sigma) like "
                f"monai.networks.nets.AutoencoderKL, got {type(output).__name__}"
            )
        reconstruction, self.z_mu, self.z_sigma = output
        return reconstruction


class FakeVolumePerceptualLoss(nn.Module):
    """A 2D perceptual loss applied to 3D volumes through slices along all three axes ("fake 3D").

    The paper computes its perceptual term with MONAI's ``PerceptualLoss(is_fake_3d=True)``: the 2D distance on
    slices taken along each axis. This does the same around any 2D loss ``(a, b) -> scalar`` (here the project's
    offline :class:`common.perceptual.FeaturePerceptualLoss`): for each axis it draws ``ratio`` of the slices at
    random, reshapes them into a 2D batch, and the three axis losses are averaged.

    Args:
        loss_2d: 2D loss taking two (N, C, H, W) batches.
        ratio: fraction of slices per axis used each call, in (0, 1]; 1 uses all of them.

    Raises:
        ValueError: ``ratio`` outside (0, 1]; inputs not 5D or of different shapes (at call time).
    """

    def __init__(self, loss_2d: nn.Module, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.loss_2d = loss_2d
        self.ratio = float(ratio)

    def _slices(self, volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        moved = volume.index_select(axis, index).movedim(axis, 1)  # (B, n, C, ...)
        return moved.reshape(-1, *moved.shape[2:])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.ndim != 5 or a.shape != b.shape:
            raise ValueError(
                f"expected two (B, C, H, W, D) volumes of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        total = a.new_zeros(())
        for axis in (2, 3, 4):
            size = a.shape[axis]
            count = max(1, round(self.ratio * size))
            index = (
                torch.randperm(size, device=a.device)[:count] if count < size else torch.arange(size, device=a.device)
            )
            total = total + self.loss_2d(self._slices(a, axis, index), self._slices(b, axis, index))
        return total / 3.0


class AutoencoderLoss(nn.Module):
    """The autoencoder's reconstruction term for ``AdversarialTrainer``: ``L1 + w_kl KL + w_p perceptual``.

    Args:
        inferer: the :class:`KLAutoencoderInferer` the trainer uses (its last posterior gives the KL term).
        kl_weight: paper 1e-6.
        perceptual_loss: a loss on (reconstruction, target), e.g. :class:`FakeVolumePerceptualLoss`; None: no term.
        perceptual_weight: paper 1e-3.

    Raises:
        ValueError: a negative weight; RuntimeError at call time when the inferer has no posterior yet.
    """

    def __init__(
        self,
        inferer: KLAutoencoderInferer,
        kl_weight: float = 1e-6,
        perceptual_loss: nn.Module | None = None,
        perceptual_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        if kl_weight < 0 or perceptual_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got kl {kl_weight} and perceptual {perceptual_weight}")
        self.inferer = inferer
        self.kl_weight = float(kl_weight)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)
        self.last_terms: dict[str, float] = {}

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.inferer.z_mu is None or self.inferer.z_sigma is None:
            raise RuntimeError("AutoencoderLoss needs the posterior of the inferer's last call; call the inferer first")
        l1 = torch.nn.functional.l1_loss(reconstruction.float(), target.float())
        kl = kl_divergence(self.inferer.z_mu.float(), self.inferer.z_sigma.float())
        loss = l1 + self.kl_weight * kl
        terms = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.perceptual_loss is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual_loss(reconstruction.float(), target.float())
            loss = loss + self.perceptual_weight * perceptual
            terms["perceptual"] = float(perceptual.detach())
        self.last_terms = terms
        return loss


def _last_output(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``PatchDiscriminator`` returns all its intermediate features; the patch logits are the last one."""
    return logits[-1] if isinstance(logits, (list, tuple)) else logits


class _WeightedPatchAdversarialLoss(nn.Module):
    """A weight times MONAI's ``PatchAdversarialLoss`` on the discriminator's last output."""

    def __init__(self, weight: float = 1e-2, criterion: str = "least_squares") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"adversarial weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.loss = PatchAdversarialLoss(criterion=criterion)

    def term(self, logits: torch.Tensor | Sequence[torch.Tensor], real: bool, for_discriminator: bool) -> torch.Tensor:
        return self.loss(_last_output(logits).float(), target_is_real=real, for_discriminator=for_discriminator)


class GeneratorAdversarialLoss(_WeightedPatchAdversarialLoss):
    """``weight * PatchAdversarialLoss(D(fake), real)``: the generator's adversarial term (paper weight 1e-2)."""

    def forward(self, fake_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.weight * self.term(fake_logits, real=True, for_discriminator=False)


class DiscriminatorAdversarialLoss(_WeightedPatchAdversarialLoss):
    """``weight * (L(D(fake), fake) + L(D(real), real)) / 2``: the discriminator's loss (paper weight 1e-2)."""

    def forward(
        self, real_logits: torch.Tensor | Sequence[torch.Tensor], fake_logits: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        fake = self.term(fake_logits, real=False, for_discriminator=True)
        real = self.term(real_logits, real=True, for_discriminator=True)
        return self.weight * 0.5 * (fake + real)


class AutoencoderPrepareBatch:
    """``prepare_batch`` of the autoencoder engines: the image is both the input and the target.

    Args:
        image_key: key of the (B, C, *spatial) images in the batch dict.
    """

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no '{self.image_key}' entry (keys: {sorted(map(str, batchdata))})")
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        return image, image


def adversarial_losses(output: Mapping[str, Any]) -> dict[str, float]:
    """The losses an ``AdversarialTrainer`` iteration produced, as floats, for Stats/TensorBoard handlers."""
    keys = {
        "reconstruction": "reconstruction_loss",
        "generator": "generator_loss",
        "discriminator": "discriminator_loss",
    }
    found = {name: output[key] for name, key in keys.items() if key in output}
    return {name: float(torch.as_tensor(value).detach().float().mean()) for name, value in found.items()}


class EncodeLatentd(MapTransform):
    """Encode ``key`` with a frozen ``AutoencoderKL`` into its posterior: ``<key>_mu`` and ``<key>_sigma``.

    Deterministic, so a ``CacheDataset`` keeps the result: the encoder runs once per case, not once per iteration.
    The input (C, *spatial) is encoded as a batch of one on ``device``; outputs are float32 tensors on the CPU.

    Args:
        keys: image keys to encode.
        autoencoder: the trained autoencoder (put in eval mode here).
        device: where the encoder runs.
        remove_image: drop the full-resolution image from the data afterwards (saves cache memory).
    """

    def __init__(
        self,
        keys: KeysCollection,
        autoencoder: nn.Module,
        device: str | torch.device = "cpu",
        remove_image: bool = True,
    ) -> None:
        super().__init__(keys)
        self.autoencoder = autoencoder.eval()
        self.device = torch.device(device)
        self.remove_image = remove_image

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float()
            z_mu, z_sigma = self.autoencoder.encode(image[None].to(self.device))
            d[f"{key}_mu"] = z_mu[0].float().cpu()
            d[f"{key}_sigma"] = z_sigma[0].float().cpu()
            if self.remove_image:
                del d[key]
        return d


class SampleLatentd(RandomizableTransform, MapTransform):
    """Draw ``key = scale * (mu + sigma * eps)`` from the cached posterior ``<source>_mu`` / ``<source>_sigma``.

    Args:
        keys: output key(s); each reads ``<key>_mu`` and ``<key>_sigma`` (as written by :class:`EncodeLatentd`).
        scale_factor: the latent scale factor (``LatentStats.scale_factor``), a float or a 0-d tensor.
    """

    def __init__(self, keys: KeysCollection, scale_factor: float | torch.Tensor = 1.0) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.scale_factor = scale_factor

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if f"{key}_mu" not in d or f"{key}_sigma" not in d:
                raise KeyError(f"SampleLatentd needs '{key}_mu' and '{key}_sigma' (from EncodeLatentd), got {list(d)}")
            mu, sigma = torch.as_tensor(d[f"{key}_mu"]), torch.as_tensor(d[f"{key}_sigma"])
            eps = torch.as_tensor(self.R.standard_normal(tuple(mu.shape)), dtype=mu.dtype)
            d[key] = (mu + sigma * eps) * float(self.scale_factor)
        return d


class LatentStats(nn.Module):
    """What sampling needs from training besides the weights, kept in the checkpoint as buffers.

    ``scale_factor``: multiplies latents before diffusion (``1 / std`` of the training latents; 1 until computed).
    ``pixdim``: voxel size (mm) of the training grid, written into the affine of the samples.
    """

    def __init__(self, pixdim: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("pixdim", torch.as_tensor([float(p) for p in pixdim], dtype=torch.float32))
        self.register_buffer("computed", torch.tensor(False))

    def set_scale(self, scale_factor: float) -> None:
        if not scale_factor > 0 or not torch.isfinite(torch.tensor(scale_factor)):
            raise ValueError(f"latent scale factor must be a positive finite number, got {scale_factor}")
        self.scale_factor.fill_(float(scale_factor))
        self.computed.fill_(True)

    def forward(self) -> torch.Tensor:  # pragma: no cover - a holder, not a layer
        return self.scale_factor


def compute_scale_factor(dataset: Any, stats: LatentStats, key: str = "image", max_items: int | None = None) -> float:
    """Set ``stats``' scale factor to ``1 / std`` of training latents drawn from ``dataset`` and return it.

    The dataset's transforms end with :class:`SampleLatentd` reading ``stats.scale_factor``, which is reset to 1
    first so the draws are unscaled. Under ``torchrun`` rank 0's value is broadcast, so every rank trains on the same
    scale.

    Args:
        dataset: a dataset whose items hold latents under ``key``.
        stats: the :class:`LatentStats` of the run (also in the checkpoint).
        key: latent key of the items.
        max_items: use at most this many items (None: all).
    """
    from common.latent import latent_scale_factor

    count = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    if count < 1:
        raise ValueError("compute_scale_factor: the training dataset is empty")
    stats.scale_factor.fill_(1.0)
    latents = torch.stack([torch.as_tensor(dataset[i][key]).float() for i in range(count)])
    stats.set_scale(latent_scale_factor(latents))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"
        value = stats.scale_factor.clone().to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        torch.distributed.broadcast(value, src=0)
        stats.scale_factor.copy_(value.to(stats.scale_factor.device))
    logger.info(f"latent scale factor 1/std over {count} training latent(s): {float(stats.scale_factor):.4f}")
    return float(stats.scale_factor)
