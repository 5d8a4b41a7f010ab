"""Latent-space helpers of the ``latent_ct`` bundle: tiled decoding, the latent scale factor and peak-memory probes.

Latent diffusion samples a small latent volume (128^3 CT -> 3 x 32^3 latents with a 4x MONAI ``AutoencoderKL``) and
decodes it once at the end. The decoder's full-resolution activations are the memory peak of sampling, so
:class:`TiledDecoder` decodes the latent tile by tile with MONAI's ``sliding_window_inference`` (whose output may be
an integer multiple of the window size) and blends the tiles, stitching on ``device`` (e.g. the CPU).

Tiles are exact away from their borders only. Each output voxel depends on the latent voxels within the decoder's
*receptive radius* R (in latent voxels; :func:`decoder_receptive_radius` measures it), and a tile zero-pads its
latent where the whole volume has real neighbours, so the outer R latent voxels of a tile are wrong wherever the tile
edge is not the volume's edge. With ``margin >= R`` those voxels get weight 0 (per tile: edges on the volume border
keep full weight) and blending is seam-free as long as every voxel lies inside some tile's trusted core, i.e.
neighbouring tiles overlap by at least ``2 * margin`` latent voxels (checked before decoding). Measured on MONAI's
``AutoencoderKL`` decoder without attention: R = 2 + 3.5 ``num_res_blocks`` rounded up for 3 levels (4x: R = 6 with
one res block, 9 with two), R = 2 + 3 ``num_res_blocks`` for 2 levels. MONAI's own Gaussian blending is not enough:
its weight map is clamped to >= 1e-3 of the peak, so in 2D/3D the corners of every tile, where the tile-border errors
are, blend with the same weight as a neighbour's clean centre (max error ~0.7 on a range of 9 at 32^2 tiles).

Two operations of ``AutoencoderKL`` are global. ``GroupNorm`` normalises with the statistics of what it sees, a tile
rather than the volume: a smooth, tile-wide difference (relative L1 of tiled vs whole decoding, random-initialised
test-size autoencoder: 0.03 for 14^3 tiles of a 16^3 latent, 0.08 for 32^2 tiles of 64^2, 0.2 for 16^2 tiles; with
real CT, whose tiles differ more, likely worse). ``group_norm="whole"`` removes it: the whole volume's statistics are
gathered tile by tile first (one extra pass over the tiles per GroupNorm layer), after which tiled decoding equals
whole decoding to float precision (relative L1 ~1e-6) with tile-sized memory. Self-attention (``attention_levels``,
``with_decoder_nonlocal_attn``) mixes all voxels of a tile and cannot be tiled exactly; Gaussian blending
(``mode="gaussian"``) at least turns such differences into smooth drifts rather than seams.

The latent scale factor (``1 / std`` of the training latents) is in :mod:`common.data.latent_scale`; the peak-memory
probe of the whole-vs-tiled decoding benchmark is :func:`tools.bench.memory.measure_peak_rss`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.utils import convert_to_tensor

__all__ = [
    "BLEND_MODES",
    "GROUP_NORM_MODES",
    "TiledDecoder",
    "tiled_decode",
    "decode",
    "decoder_receptive_radius",
    "split_decoder",
    "seamless_overlap",
    "tail_receptive_radius",
    "decode_tiled_tail",
]


BLEND_MODES = ("constant", "gaussian")
"""Tile weights: equal weight, or a Gaussian centred on the tile (``sigma_scale`` x tile size)."""


GROUP_NORM_MODES = ("tile", "whole")
"""GroupNorm statistics of a tile: its own (plain tiling), or those of the whole volume (gathered tile by tile)."""


DecodeFn = Callable[[torch.Tensor], torch.Tensor]


def _decode_fn(autoencoder: Any) -> DecodeFn:
    """The latent -> image callable: ``autoencoder.decode`` (MONAI ``AutoencoderKL``) or the object itself."""
    method = getattr(autoencoder, "decode", None)
    if callable(method):
        return method
    if callable(autoencoder):
        return autoencoder
    raise TypeError(
        f"autoencoder must have a decode(z) method (e.g. MONAI AutoencoderKL) or be a callable z -> image, "
        f"got {type(autoencoder).__name__}."
    )


def _as_latents(z: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate latents (B, C, H, W) or (B, C, H, W, D) in float32/float64 and return them as a plain tensor."""
    tensor = convert_to_tensor(z, track_meta=False)
    if tensor.ndim not in (4, 5) or tensor.numel() == 0:
        raise ValueError(
            f"z must be non-empty latents (B, C, H, W) or (B, C, H, W, D), got shape {tuple(tensor.shape)}."
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"z must be float32 or float64 (tile weights underflow in half precision), got {tensor.dtype}; "
            "convert it with z.float()."
        )
    return tensor


def _check_overlap(overlap: Sequence[float] | float) -> Sequence[float] | float:
    values = overlap if isinstance(overlap, Sequence) else [overlap]
    if not values or any(isinstance(o, bool) or not (0.0 <= float(o) < 1.0) for o in values):
        raise ValueError(f"overlap must be a fraction in [0, 1) (or one per spatial axis), got {overlap!r}.")
    return overlap


def _check_roi(roi_size: Sequence[int] | int) -> Sequence[int] | int:
    values = roi_size if isinstance(roi_size, Sequence) else [roi_size]
    if not values or any(isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 1 for r in values):
        raise ValueError(
            f"roi_size must be a positive integer (or one per spatial axis) in latent voxels, got {roi_size!r}."
        )
    return roi_size


def _per_axis(value: Any, latent_size: Sequence[int], name: str) -> tuple[Any, ...]:
    """One value per latent spatial axis: a scalar is repeated, a sequence must have the right length."""
    if not isinstance(value, Sequence):
        return (value,) * len(latent_size)
    if len(value) != len(latent_size):
        raise ValueError(f"{name} {tuple(value)} must have one entry per latent spatial axis {tuple(latent_size)}.")
    return tuple(value)


def _scan_starts(size: int, roi: int, overlap: float | None = None, interval: int | None = None) -> list[int]:
    """Tile starts along one axis, every ``interval`` voxels (by default as MONAI's ``sliding_window_inference``
    derives it from ``overlap``), the last flush with the end."""
    if roi >= size:
        return [0]
    if interval is None:
        interval = max(int(roi * (1 - float(overlap or 0.0))), 1)
    starts = [min(i * interval, size - roi) for i in range(math.ceil(size / interval))]
    return sorted(set(starts))


def _check_coverage(size: int, roi: int, overlap: float, margin: int, axis: int) -> None:
    """Every latent voxel must lie in the trusted core of a tile (outside the margins at interior tile edges)."""
    covered_to = 0
    for start in _scan_starts(size, roi, overlap):
        stop = start + roi
        core = (start + margin if start > 0 else 0, stop - margin if stop < size else stop)
        if core[0] > covered_to:
            break
        covered_to = max(covered_to, core[1])
    if covered_to < size:
        raise ValueError(
            f"tiles of {roi} latent voxels with overlap {overlap} along spatial axis {axis} (latent size {size}) leave "
            f"latent voxel {covered_to} inside the {margin}-voxel margin of every tile: use an overlap of at least "
            f"2 * margin = {2 * margin} voxels (overlap >= {2 * margin / roi:.3f}), "
            "a larger roi_size or a smaller margin."
        )


class _WeightedTiles:
    """Predictor for ``sliding_window_inference``: decodes a batch of tiles and appends each tile's blending weight.

    MONAI blends every window with one shared weight map; here the weight depends on where the tile lies (margins
    only at edges inside the volume), so the weighted decode and the weight are both stitched with constant weights
    and divided afterwards: ``sum_k w_k x_k / sum_k w_k``.
    """

    def __init__(
        self,
        decode_fn: DecodeFn,
        latent_size: Sequence[int],
        mode: str,
        margin: int,
        sigma_scale: float,
        statistics: _WholeVolumeGroupNorm | None = None,
    ) -> None:
        self.decode_fn, self.latent_size, self.statistics = decode_fn, tuple(latent_size), statistics
        self.mode, self.margin, self.sigma_scale = mode, margin, sigma_scale
        self.factor: tuple[int, ...] | None = None

    def _check_factor(self, tiles: torch.Tensor, decoded: Any) -> tuple[int, ...]:
        if not isinstance(decoded, torch.Tensor) or decoded.ndim != tiles.ndim or decoded.shape[0] != tiles.shape[0]:
            shape = tuple(decoded.shape) if isinstance(decoded, torch.Tensor) else type(decoded).__name__
            raise ValueError(
                f"the decoder must map latents {tuple(tiles.shape)} to images (B, C, *spatial), got {shape}."
            )
        in_size, out_size = tiles.shape[2:], decoded.shape[2:]
        if any(o % i for i, o in zip(in_size, out_size)) or any(o < i for i, o in zip(in_size, out_size)):
            raise ValueError(
                f"the decoder must upsample by an integer factor, got tile {tuple(in_size)} -> {tuple(out_size)}."
            )
        factor = tuple(o // i for i, o in zip(in_size, out_size))
        if self.factor is not None and factor != self.factor:
            raise ValueError(f"the decoder's upsampling factor changed between tiles: {self.factor} then {factor}.")
        self.factor = factor
        return factor

    def _profile(self, start: int, stop: int, axis: int, factor: int, like: torch.Tensor) -> torch.Tensor:
        """1D weight of one tile along one axis at output resolution."""
        roi, size = stop - start, self.latent_size[axis]
        position = (torch.arange(roi * factor, dtype=torch.float64) + 0.5) / factor  # latent units from the tile start
        centre = roi / 2
        weight = torch.ones_like(position)
        if self.mode == "gaussian":
            weight = torch.exp(-((position - centre) ** 2) / (2 * (self.sigma_scale * roi) ** 2))
            if start == 0:  # no neighbour before: this tile is the one to trust up to the volume edge
                weight[position < centre] = 1.0
            if stop == size:
                weight[position > centre] = 1.0
        if start > 0:
            weight[: self.margin * factor] = 0.0
        if stop < size and self.margin:
            weight[-self.margin * factor :] = 0.0
        return weight.to(device=like.device, dtype=like.dtype)

    def __call__(self, tiles: torch.Tensor, locations: Sequence[Sequence[slice]]) -> torch.Tensor:
        if self.statistics is not None:  # MONAI batches windows of any image: tell the GroupNorm layers whose they are
            self.statistics.rows = [location[0].start for location in locations]
        decoded = self.decode_fn(tiles)
        factor = self._check_factor(tiles, decoded)
        weights = []
        for location in locations:
            weight = torch.ones((1,) * (len(factor) + 1), dtype=decoded.dtype, device=decoded.device)
            for axis, window in enumerate(location[2:]):
                profile = self._profile(window.start, window.stop, axis, factor[axis], decoded)
                weight = weight * profile.reshape([1] + [-1 if a == axis else 1 for a in range(len(factor))])
            weights.append(weight)
        weight = torch.stack(weights)
        return torch.cat([decoded * weight, weight], dim=1)


class _StopDecoding(Exception):
    """Raised inside the decoder once the GroupNorm whose statistics are being gathered has seen its input."""


def _normalise(norm: torch.nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """GroupNorm of ``x`` with given per-(sample, group) statistics (B, G, 1), then the module's affine map.

    One new tensor of ``x``'s size; the rest is done in place (this replaces the layer at full resolution).
    """
    normalised = x.reshape(x.shape[0], norm.num_groups, -1) - mean.to(x)
    normalised.mul_(torch.rsqrt(var.to(x) + norm.eps))
    normalised = normalised.reshape(x.shape)
    if norm.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        normalised.mul_(norm.weight.reshape(shape)).add_(norm.bias.reshape(shape))
    return normalised


class _WholeVolumeGroupNorm:
    """Makes every ``GroupNorm`` of a decoder normalise with the statistics of the whole decoded volume.

    The statistics are gathered tile by tile, one GroupNorm at a time in forward order: with the earlier layers
    already fixed, each tile is decoded up to the next unfixed GroupNorm, whose input is summarised (per sample and
    group: count, mean, sum of squared deviations, merged over tiles with Chan et al.'s update) over the latent
    voxels the tile owns (a partition of the volume inside the tiles' trusted cores; exact when ``margin`` >= the
    receptive radius), and the forward is stopped there. So one pass over the tiles per GroupNorm, each with the
    memory of one tile; the blended decode then runs with all statistics fixed. The layers' ``forward`` is replaced
    while active (a forward hook would compute the unused plain GroupNorm output as well) and restored by
    :meth:`close`.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.fixed: dict[torch.nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}
        self.gathering = False
        self.target: torch.nn.GroupNorm | None = None
        self.owned: tuple[tuple[int, int], ...] = ()
        self.tile_size: tuple[int, ...] = ()
        self.summaries: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.rows: list[int] | None = None  # the sample of each batch row of the next decoder call (None: all)
        for norm in self.norms:
            norm.forward = functools.partial(self._forward, norm)

    def close(self) -> None:
        for norm in self.norms:
            norm.__dict__.pop("forward", None)

    def _forward(self, norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if norm in self.fixed:
            mean, var = self.fixed[norm]
            rows = slice(None) if self.rows is None else self.rows
            return _normalise(norm, x, mean[rows], var[rows])
        if not self.gathering:
            raise RuntimeError("a GroupNorm layer without gathered statistics ran after the gathering passes.")
        if self.target is None:
            self.target = norm
        if norm is not self.target:
            raise RuntimeError("the decoder called its GroupNorm layers in a different order for different tiles.")
        region = []
        for (start, stop), tile, size in zip(self.owned, self.tile_size, x.shape[2:]):
            if size % tile:
                raise ValueError(f"a GroupNorm input of spatial size {tuple(x.shape[2:])} is no multiple of the tile.")
            region.append(slice(start * (size // tile), stop * (size // tile)))
        owned = x[(slice(None), slice(None), *region)].reshape(x.shape[0], norm.num_groups, -1)
        var, mean = torch.var_mean(owned, dim=-1, unbiased=False)
        self.summaries.append((owned.shape[-1], mean.double().cpu(), var.double().cpu() * owned.shape[-1]))
        raise _StopDecoding

    def _fix_target(self) -> None:
        """Merge the tiles' summaries of the target layer into its whole-volume mean and (biased) variance."""
        count, mean, m2 = self.summaries[0]
        for n, tile_mean, tile_m2 in self.summaries[1:]:
            delta = tile_mean - mean
            mean = mean + delta * n / (count + n)
            m2 = m2 + tile_m2 + delta.square() * count * n / (count + n)
            count += n
        self.fixed[self.target] = (mean[..., None], (m2 / count)[..., None])

    def gather(
        self,
        decode_fn: DecodeFn,
        z: torch.Tensor,
        roi: Sequence[int],
        margin: int,
        sw_device: torch.device | str | None,
    ) -> None:
        """Fix the statistics of every GroupNorm, one pass over tiles of ``z`` per layer.

        The tiles overlap by exactly ``2 * margin`` (the fewest whose trusted cores still cover the volume).
        """
        axes = []
        for size, tile in zip(z.shape[2:], roi):
            starts = _scan_starts(size, tile, interval=max(tile - 2 * margin, 1))
            cores = [start + margin if start > 0 else 0 for start in starts] + [size]
            axes.append([(start, (cores[i] - start, cores[i + 1] - start)) for i, start in enumerate(starts)])
        tiles = list(itertools.product(*axes))
        self.gathering, self.rows = True, None
        try:
            for _ in range(len(self.norms) + 1):
                self.target, self.summaries = None, []
                for tile in tiles:
                    region = tuple(slice(start, start + size) for (start, _), size in zip(tile, roi))
                    self.owned, self.tile_size = tuple(owned for _, owned in tile), tuple(roi)
                    try:
                        decode_fn(z[(slice(None), slice(None), *region)].to(sw_device or z.device))
                    except _StopDecoding:
                        continue
                    return  # a tile decoded to the end without an unfixed GroupNorm: all statistics are fixed
                self._fix_target()
        finally:
            self.gathering = False


class TiledDecoder(SlidingWindowInferer):
    """Decode latents tile by tile (MONAI ``SlidingWindowInferer``), blending overlapping tiles.

    Call it as ``TiledDecoder(...)(z, autoencoder)``; it runs without gradients. Tiles and their decoded images live
    on ``sw_device``, the stitched output (plus one weight channel) on ``device``, so only one tile's decoder
    activations (``sw_batch_size`` tiles) exist at a time. The output equals whole-volume decoding up to the global
    operations of the decoder (module docstring); ``margin`` >= the decoder's receptive radius and an overlap of at
    least ``2 * margin`` latent voxels remove the tile-border errors, ``group_norm="whole"`` the GroupNorm ones.
    Exact setting for an attention-free ``AutoencoderKL``::

        radius = decoder_receptive_radius(autoencoder, (3, 24, 24, 24))
        TiledDecoder(roi_size=16, overlap=0.75, margin=radius, group_norm="whole", device="cpu")(z, autoencoder)

    Args:
        roi_size: tile size in LATENT voxels, one int or one per spatial axis. Axes where it exceeds the latent are
            clipped to the latent size (one tile spans them), so a large ``roi_size`` decodes the whole volume.
        overlap: fraction of the tile shared with the next one, in [0, 1), one float or one per axis.
        mode: ``"gaussian"`` (tiles weighted by a Gaussian of ``sigma_scale`` x tile size around their centre, flat
            towards the volume border; smooth transitions) or ``"constant"`` (plain average).
        sw_batch_size: tiles decoded per decoder call.
        sw_device: device of the tiles and the decoder (default: that of ``z``).
        device: device of the stitched output (default: that of ``z``), e.g. ``"cpu"`` to keep it off the GPU.
        margin: latent voxels at each interior tile edge that get weight 0 (0: none).
        group_norm: ``"tile"``: every GroupNorm normalises a tile with the tile's statistics (one decoder pass per
            tile, differs from the whole decode); ``"whole"``: with the whole volume's statistics, gathered first
            with one extra pass over the tiles per GroupNorm layer (each stopping at that layer), so with ``margin``
            >= the receptive radius and no attention the result equals whole decoding to float precision.
            ``"whole"`` needs the autoencoder to be a ``torch.nn.Module``.
        sigma_scale: Gaussian width relative to the tile size (MONAI's default 0.125).
        progress: show a progress bar over the tiles.

    Raises:
        ValueError: bad ``roi_size``, ``overlap``, ``mode``, ``margin``, ``group_norm``, ``sigma_scale`` or
            ``sw_batch_size``; at call time, latents of the wrong shape or dtype, tiles whose margins leave voxels
            uncovered, a decoder that does not upsample by a fixed integer factor, or ``group_norm="whole"`` with a
            plain callable.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "gaussian",
        sw_batch_size: int = 1,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        margin: int = 0,
        group_norm: str = "tile",
        sigma_scale: float = 0.125,
        progress: bool = False,
    ) -> None:
        _check_roi(roi_size)
        _check_overlap(overlap)
        if mode not in BLEND_MODES:
            raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}.")
        if group_norm not in GROUP_NORM_MODES:
            raise ValueError(f"group_norm must be one of {GROUP_NORM_MODES}, got {group_norm!r}.")
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"margin must be a non-negative integer number of latent voxels, got {margin!r}.")
        if not (isinstance(sigma_scale, int | float) and math.isfinite(sigma_scale) and sigma_scale > 0):
            raise ValueError(f"sigma_scale must be a positive number, got {sigma_scale!r}.")
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}.")
        # MONAI blends with constant weights; the per-tile weights travel as an extra output channel (_WeightedTiles).
        super().__init__(
            roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode="constant",
            sw_device=sw_device,
            device=device,
            progress=progress,
            with_coord=True,
        )
        self.blend_mode, self.margin, self.blend_sigma_scale = mode, margin, float(sigma_scale)
        self.group_norm = group_norm

    def tile_size(self, latent_size: Sequence[int]) -> tuple[int, ...]:
        """The tile size used for latents of spatial size ``latent_size``: ``roi_size`` clipped to it."""
        roi = _per_axis(self.roi_size, latent_size, "roi_size")
        return tuple(min(int(r), int(s)) for r, s in zip(roi, latent_size))

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Decode ``inputs`` (latents (B, C, *latent_spatial)) with ``network`` (autoencoder or decode callable).

        Returns:
            Images (B, C_out, *latent_spatial x factor) on ``device``.
        """
        if args or kwargs:
            raise ValueError(f"TiledDecoder takes only (z, autoencoder), got extra arguments {args} {sorted(kwargs)}.")
        z = _as_latents(inputs)
        latent_size = tuple(z.shape[2:])
        roi = self.tile_size(latent_size)
        overlap = _per_axis(self.overlap, latent_size, "overlap")
        for axis, (size, tile, fraction) in enumerate(zip(latent_size, roi, overlap)):
            _check_coverage(size, tile, float(fraction), self.margin, axis)
        decode_fn = _decode_fn(network)
        statistics = None
        if self.group_norm == "whole":
            if not isinstance(network, torch.nn.Module):
                raise ValueError(
                    f"group_norm='whole' needs the autoencoder as a torch.nn.Module, got {type(network).__name__}."
                )
            statistics = _WholeVolumeGroupNorm(network)
        predictor = _WeightedTiles(
            decode_fn, latent_size, self.blend_mode, self.margin, self.blend_sigma_scale, statistics
        )
        try:
            with torch.no_grad():
                if statistics is not None:
                    statistics.gather(decode_fn, z, roi, self.margin, self.sw_device)
                stitched = sliding_window_inference(
                    z,
                    roi,
                    self.sw_batch_size,
                    predictor,
                    overlap=overlap,
                    mode="constant",
                    sw_device=self.sw_device,
                    device=self.device,
                    progress=self.progress,
                    with_coord=True,
                )
        finally:
            if statistics is not None:
                statistics.close()
        weight = stitched[:, -1:]
        if not bool((weight > 0).all()):
            raise RuntimeError("some output voxels got zero total tile weight; decode in float32 or lower the margin.")
        return stitched[:, :-1] / weight


def tiled_decode(
    autoencoder: Any,
    z: torch.Tensor,
    roi_size: Sequence[int] | int,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    margin: int = 0,
    group_norm: str = "tile",
) -> torch.Tensor:
    """Decode latents ``z`` tile by tile: ``TiledDecoder(roi_size, ...)(z, autoencoder)``; see :class:`TiledDecoder`."""
    inferer = TiledDecoder(roi_size, overlap, mode, sw_batch_size, sw_device, device, margin, group_norm)
    return inferer(z, autoencoder)


def decode(
    autoencoder: Any,
    z: torch.Tensor,
    tiled: bool = False,
    roi_size: Sequence[int] | int | None = None,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    margin: int = 0,
    group_norm: str = "tile",
    sw_batch_size: int = 1,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode latents whole (one decoder call) or tiled (:func:`tiled_decode`), without gradients.

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (its ``decode``) or a callable z -> image.
        z: latents (B, C, *latent_spatial), float32/float64.
        tiled: decode tile by tile; then ``roi_size`` is required.
        roi_size, overlap, mode, margin, group_norm, sw_batch_size: tiling settings (:class:`TiledDecoder`).
        sw_device: device the decoder runs on (default: that of ``z``).
        device: device of the returned images (default: that of ``z``).

    Returns:
        Images (B, C_out, *spatial).
    """
    if tiled:
        if roi_size is None:
            raise ValueError("roi_size (tile size in latent voxels) is required when tiled=True.")
        return tiled_decode(
            autoencoder, z, roi_size, overlap, mode, sw_batch_size, sw_device, device, margin, group_norm
        )
    z = _as_latents(z)
    with torch.no_grad():
        images = _decode_fn(autoencoder)(z if sw_device is None else z.to(sw_device))
    return images.to(device if device is not None else z.device)


def _detached_group_norm(
    module: torch.nn.GroupNorm, args: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    """Forward hook: the same GroupNorm output, but with its statistics detached (gradients stay local)."""
    x = args[0]
    grouped = x.reshape(x.shape[0], module.num_groups, -1)
    mean = grouped.mean(-1, keepdim=True).detach()
    var = grouped.var(-1, unbiased=False, keepdim=True).detach()
    normalised = ((grouped - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
    if module.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        normalised = normalised * module.weight.reshape(shape) + module.bias.reshape(shape)
    return normalised


def decoder_receptive_radius(
    autoencoder: Any, latent_shape: Sequence[int], device: torch.device | str | None = None
) -> int:
    """Receptive radius R of a decoder in latent voxels: each output voxel depends on latent voxels within R.

    Measured, not derived: the output voxels of the central latent voxel of a random probe latent are
    back-propagated to the latent, and R is the largest distance (per axis) of a latent voxel with a non-zero
    gradient. ``GroupNorm`` statistics are detached during the probe (they are global, see the module docstring);
    any other global operation (self-attention) spreads the gradient over the whole probe and raises. Use R as the
    ``margin`` of :class:`TiledDecoder`. The parameters' ``.grad`` are left untouched. With ReLU-like activations a
    dependency can show a zero gradient for one probe by chance; MONAI's ``AutoencoderKL`` uses SiLU.

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (its ``decode``) or a callable z -> image; its parameters are used as
            they are (no training mode change).
        latent_shape: (C, *spatial) of the probe latent, e.g. ``(3, 24, 24, 24)``; every spatial size must exceed
            2 R + 1 (the probe fails clearly otherwise).
        device: where to run the probe (default: CPU).

    Returns:
        R as an int.

    Raises:
        ValueError: a bad ``latent_shape``, or a gradient that reaches the probe border (global operation or a
            probe smaller than the receptive field).
    """
    shape = tuple(latent_shape)
    if len(shape) not in (3, 4) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"latent_shape must be (C, H, W) or (C, H, W, D) positive ints, got {latent_shape!r}.")
    if min(shape[1:]) < 3:
        raise ValueError(f"latent_shape spatial sizes must be >= 3 to probe anything, got {shape[1:]}.")
    decode_fn = _decode_fn(autoencoder)
    norms = (
        [m for m in autoencoder.modules() if isinstance(m, torch.nn.GroupNorm)]
        if hasattr(autoencoder, "modules")
        else []
    )
    handles = [m.register_forward_hook(_detached_group_norm) for m in norms]
    try:
        generator = torch.Generator().manual_seed(0)
        z = torch.randn((1, *shape), generator=generator).to(device or "cpu").requires_grad_(True)
        image = decode_fn(z)
        centre = tuple(s // 2 for s in shape[1:])
        factor = [o // i for i, o in zip(shape[1:], image.shape[2:])]
        region = tuple(slice(c * f, (c + 1) * f) for c, f in zip(centre, factor))
        (gradient,) = torch.autograd.grad(image[(slice(None), slice(None), *region)].sum(), z)
    finally:
        for handle in handles:
            handle.remove()
    support = (gradient[0].abs().sum(0) > 0).nonzero()
    if len(support) == 0:
        raise ValueError("no latent voxel influences the probed output voxels (zero gradient): cannot measure R.")
    radius = 0
    for axis, (c, size) in enumerate(zip(centre, shape[1:])):
        low, high = int(support[:, axis].min()), int(support[:, axis].max())
        if low == 0 or high == size - 1:
            raise ValueError(
                f"the decoder's gradient reaches the border of the {shape[1:]} probe along axis {axis}: it has a "
                "global operation (e.g. self-attention) or a receptive field wider than the probe; tiles cannot be "
                "exact (use a larger probe if the decoder is purely local)."
            )
        radius = max(radius, c - low, high - c)
    return radius


def split_decoder(autoencoder: torch.nn.Module) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """Split ``AutoencoderKL.decode`` into a global head and a convolutional tail: ``decode(z) == tail(head(z))``.

    The head is ``post_quant_conv`` and the decoder blocks up to the last self-attention block (the non-local block
    and the attention of the deepest level, all at latent resolution: small); the tail is everything after it
    (upsampling, res blocks, GroupNorm, output convolution: where the full-resolution memory goes). Only the tail
    has to be tiled, and without attention it tiles exactly (:func:`decode_tiled_tail`).

    Raises:
        TypeError: ``autoencoder`` lacks MONAI ``AutoencoderKL``'s ``post_quant_conv`` / ``decoder.blocks``.
    """
    from monai.networks.blocks import SpatialAttentionBlock

    decoder = getattr(autoencoder, "decoder", None)
    if not hasattr(autoencoder, "post_quant_conv") or not hasattr(decoder, "blocks"):
        raise TypeError(
            f"split_decoder needs a MONAI AutoencoderKL (post_quant_conv, decoder.blocks), got {type(autoencoder)}"
        )
    blocks = list(decoder.blocks)
    attention = [i for i, block in enumerate(blocks) if isinstance(block, SpatialAttentionBlock)]
    last = attention[-1] if attention else -1
    head = torch.nn.Sequential(autoencoder.post_quant_conv, *blocks[: last + 1])
    tail = torch.nn.Sequential(*blocks[last + 1 :])
    return head, tail


def seamless_overlap(roi: int, margin: int) -> float:
    """The least overlap fraction of ``roi``-voxel tiles that leaves ``2 * margin`` voxels shared (capped at 0.99)."""
    return min(0.99, (2 * int(margin) + 0.5) / int(roi))


def tail_receptive_radius(autoencoder: torch.nn.Module, spatial_dims: int = 3, probe_size: int = 16) -> int:
    """Receptive radius (latent voxels) of the attention-free decoder tail of :func:`split_decoder`."""
    head, tail = split_decoder(autoencoder)
    channels = next(m.out_channels for m in reversed(list(head.modules())) if hasattr(m, "out_channels"))
    with torch.enable_grad():  # the probe back-propagates, also when called under no_grad (sampling)
        return decoder_receptive_radius(tail, (int(channels), *([int(probe_size)] * spatial_dims)))


def decode_tiled_tail(
    autoencoder: torch.nn.Module,
    z: torch.Tensor,
    roi_size: Sequence[int] | int,
    overlap: Sequence[float] | float = 0.75,
    mode: str = "gaussian",
    margin: int | None = None,
    group_norm: str = "whole",
    sw_batch_size: int = 1,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    probe_size: int = 16,
) -> torch.Tensor:
    """Decode with the attention head on the whole latent and the convolutional tail tile by tile.

    The decoder of the paper's autoencoder has self-attention at latent resolution, which no tiling reproduces; it
    is also cheap (latent resolution, flash attention keeps it linear in memory). The full-resolution tail is
    attention-free, so with ``margin`` >= its receptive radius (measured once per tail when None) and
    ``group_norm="whole"`` the tiled result equals :func:`decode` of the whole latent to float precision, while the
    tail's activations exist for one tile at a time.

    Args:
        autoencoder: MONAI ``AutoencoderKL``.
        z: latents (B, C, *latent_spatial).
        roi_size, overlap, mode, group_norm, sw_batch_size, sw_device, device: see :class:`TiledDecoder`; the
            overlap must leave ``2 * margin`` latent voxels between neighbouring tiles.
        margin: trusted-core margin in latent voxels; None measures the tail's receptive radius.
        probe_size: latent size of the receptive-radius probe (must exceed twice the radius).

    Returns:
        Images (B, C_out, *spatial) on ``device`` (default: that of ``z``).
    """
    head, tail = split_decoder(autoencoder)
    z = _as_latents(z)
    run_device = sw_device or z.device
    with torch.no_grad():
        features = head(z.to(run_device))
    if margin is None:
        margin = decoder_receptive_radius(tail, (features.shape[1], *([int(probe_size)] * (z.ndim - 2))))
    decoder = TiledDecoder(
        roi_size,
        overlap=overlap,
        mode=mode,
        sw_batch_size=sw_batch_size,
        sw_device=run_device,
        device=device if device is not None else z.device,
        margin=int(margin),
        group_norm=group_norm,
    )
    return decoder(features, tail)
