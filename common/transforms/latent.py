"""Transforms of latent diffusion's second stage: encode images to posterior moments once, sample latents from them."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from torch import nn

__all__ = ["EncodeLatentd", "SampleLatentd"]


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
