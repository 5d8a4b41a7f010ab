"""Training, validation and joint sampling of paired diffusion networks (one denoiser per modality).

The networks live in one ``torch.nn.ModuleDict`` keyed by modality (e.g. ``{"ct", "pet", "mask"}``); network ``m``
is called as ``network[m](x_t[m], t, conditions)`` where ``conditions`` stacks the other modalities' noisy images
along channels in the order of ``modalities`` (see :func:`stack_conditions`). All modalities share the timestep.

``PairedDiffusionTrainer`` (a MONAI ``Trainer``, i.e. an ignite engine): per batch of triples draws one timestep per
sample and (offset) noise per modality, predicts every modality's noise with its network given the others' noisy
images, and adds the noise losses (the shared loss). From ``perceptual_start_epoch`` on it adds a perceptual loss
between the x0 estimates of every pair of modalities (the inverse of the forward process,
``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``): the paper's way of pushing the modalities to agree.
One backward pass, then each network's own optimiser steps.

``PairedDiffusionEvaluator``: the validation noise loss with fixed noise and timesteps (comparable across epochs).

``PairedDiffusionInferer``: joint sampling. At every step each network is conditioned on the other modalities'
current noisy states (all predictions are made before any state moves), each modality steps with its own copy of
the sampler (multistep samplers keep per-modality history). Noise seeding starts from a real triple noised to a
fraction of the schedule instead of pure noise.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import Evaluator, Trainer
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from torch import nn
from tqdm import tqdm

from common.noise import offset_noise

__all__ = [
    "distributed_networks",
    "paired_optimizers",
    "PairedDiffusionEvaluator",
    "PairedDiffusionInferer",
    "PairedDiffusionTrainer",
    "predict_original",
    "stack_conditions",
]


def paired_optimizers(
    network: nn.ModuleDict, optimizer: type[torch.optim.Optimizer] | str = "Adam", **options: Any
) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per network of ``network`` (a ``torch.optim`` class or its name; ``options`` such as ``lr``)."""
    if isinstance(optimizer, str):
        if not hasattr(torch.optim, optimizer):
            raise ValueError(f"optimizer must name a torch.optim class, got {optimizer!r}")
        optimizer = getattr(torch.optim, optimizer)
    return {name: optimizer(module.parameters(), **options) for name, module in network.items()}


def distributed_networks(network: nn.ModuleDict, device: torch.device | str) -> nn.ModuleDict:
    """Each network of ``network`` wrapped in its own ``DistributedDataParallel`` (the modules are shared, so
    checkpoints and EMA can keep using the unwrapped ``network``)."""
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return nn.ModuleDict(
        {name: nn.parallel.DistributedDataParallel(module, device_ids=ids) for name, module in network.items()}
    )


def stack_conditions(images: Mapping[str, torch.Tensor], modalities: Sequence[str], target: str) -> torch.Tensor:
    """The conditions of ``target``'s network: every other modality's image, in ``modalities`` order, along channels."""
    return torch.cat([images[m] for m in modalities if m != target], dim=1)


def _alpha_bar(scheduler: Scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod.to(device=like.device, dtype=like.dtype)
    return alphas_cumprod[timesteps].reshape(-1, *(1,) * (like.dim() - 1))


def predict_original(
    scheduler: Scheduler, noisy: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, clip: bool = True
) -> torch.Tensor:
    """x0 estimate from an epsilon prediction (the inverse of the forward process), clipped to [-1, 1] if ``clip``."""
    alpha_bar = _alpha_bar(scheduler, timesteps, noisy)
    original = (noisy - (1.0 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    return original.clamp(-1.0, 1.0) if clip else original


def _check_networks(network: nn.Module, modalities: Sequence[str]) -> None:
    if not isinstance(network, nn.ModuleDict):
        raise TypeError(f"network must be a torch.nn.ModuleDict keyed by modality, got {type(network).__name__}")
    missing = [m for m in modalities if m not in network]
    if missing or len(modalities) < 2:
        raise ValueError(
            f"network must hold one network per modality {list(modalities)} (at least two), has {list(network.keys())}"
        )


def _modalities_of(batch: Mapping[str, Any], modalities: Sequence[str], device: Any, non_blocking: bool) -> dict:
    missing = [m for m in modalities if m not in batch]
    if missing:
        raise KeyError(f"batch has no key(s) {missing}; expected one image per modality {list(modalities)}")
    images = {m: torch.as_tensor(batch[m]).to(device, non_blocking=non_blocking) for m in modalities}
    shapes = {m: tuple(image.shape) for m, image in images.items()}
    if len({shape[:1] + shape[2:] for shape in shapes.values()}) != 1:
        raise ValueError(f"the modalities of a batch must share batch and spatial sizes, got {shapes}")
    return images


class PairedDiffusionTrainer(Trainer):
    """Ignite trainer of paired denoisers with a shared noise loss and a delayed cross-modality perceptual loss.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with one (B, C, *spatial) image per modality key, scaled to [-1, 1].
        network: ``nn.ModuleDict`` of denoisers keyed by modality.
        optimizers: one optimiser per modality (same keys), each over its network's parameters.
        scheduler: the training noise scheduler (MONAI ``DDPMScheduler``; epsilon prediction).
        modalities: modality keys in condition order. Default ("ct", "pet", "mask").
        loss_function: noise loss ``f(prediction, target)``, e.g. ``torch.nn.MSELoss()``.
        offset_noise_scale: scale of the per-sample, per-channel noise offset (0 disables). Default 0.1.
        perceptual_loss: ``f(a, b) -> scalar`` between two images, or None (no perceptual term).
        perceptual_weight: weight of the perceptual term. Default 1.0.
        perceptual_start_epoch: first epoch (1-based) with the perceptual term. Default 50 (the paper).
        clip_x0: clip the x0 estimates to [-1, 1] before the perceptual loss. Default True.
        Other arguments as MONAI's ``Trainer`` (epoch_length, non_blocking, key_train_metric, additional_metrics,
        metric_cmp_fn, train_handlers, amp, event_names, event_to_attr, decollate).

    ``engine.state.output`` holds ``loss`` (total), ``noise_loss``, ``perceptual_loss`` (0 while off) and
    ``loss_<modality>`` as Python floats except ``loss`` (a tensor), plus the batch's ``images`` and ``noisy`` dicts.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.ModuleDict,
        optimizers: Mapping[str, torch.optim.Optimizer],
        scheduler: Scheduler,
        modalities: Sequence[str] = ("ct", "pet", "mask"),
        loss_function: Callable | None = None,
        offset_noise_scale: float = 0.1,
        perceptual_loss: Callable | None = None,
        perceptual_weight: float = 1.0,
        perceptual_start_epoch: int = 50,
        clip_x0: bool = True,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
    ) -> None:
        modalities = list(modalities)
        _check_networks(network, modalities)
        missing = [m for m in modalities if m not in optimizers]
        if missing:
            raise ValueError(f"optimizers must have one optimiser per modality {modalities}, missing {missing}")
        if offset_noise_scale < 0 or perceptual_weight < 0 or perceptual_start_epoch < 1:
            raise ValueError(
                "offset_noise_scale and perceptual_weight must be >= 0 and perceptual_start_epoch >= 1, got "
                f"{offset_noise_scale}, {perceptual_weight}, {perceptual_start_epoch}"
            )
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            **extra,
        )
        self.network = network
        self.optimizers = dict(optimizers)
        self.optimizer = self.optimizers[modalities[0]]  # for handlers that expect one (e.g. LR logging)
        self.noise_scheduler = scheduler
        self.modalities = modalities
        self.loss_function = loss_function if loss_function is not None else nn.MSELoss()
        self.offset_noise_scale = float(offset_noise_scale)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_start_epoch = int(perceptual_start_epoch)
        self.clip_x0 = clip_x0

    def perceptual_active(self, epoch: int) -> bool:
        """Whether the perceptual term is part of the loss in ``epoch`` (1-based)."""
        return self.perceptual_loss is not None and self.perceptual_weight > 0 and epoch >= self.perceptual_start_epoch

    def compute_losses(self, images: Mapping[str, torch.Tensor], epoch: int) -> dict[str, Any]:
        """Forward pass of all networks on one batch; returns the loss terms (tensors) and the noisy images."""
        reference = images[self.modalities[0]]
        timesteps = torch.randint(
            0, self.noise_scheduler.num_train_timesteps, (reference.shape[0],), device=reference.device
        ).long()
        noises = {m: offset_noise(images[m], self.offset_noise_scale) for m in self.modalities}
        noisy = {m: self.noise_scheduler.add_noise(images[m], noises[m], timesteps) for m in self.modalities}
        predictions = {
            m: self.network[m](noisy[m], timesteps, stack_conditions(noisy, self.modalities, m))
            for m in self.modalities
        }
        terms = {f"loss_{m}": self.loss_function(predictions[m], noises[m]).mean() for m in self.modalities}
        noise_loss = sum(terms.values())
        perceptual = torch.zeros((), device=reference.device)
        if self.perceptual_active(epoch):
            originals = {
                m: predict_original(self.noise_scheduler, noisy[m], predictions[m], timesteps, self.clip_x0)
                for m in self.modalities
            }
            pairs = list(itertools.combinations(self.modalities, 2))
            perceptual = sum(self.perceptual_loss(originals[a], originals[b]).mean() for a, b in pairs) / len(pairs)
        return {
            "loss": noise_loss + self.perceptual_weight * perceptual,
            "noise_loss": noise_loss,
            "perceptual_loss": perceptual,
            "noisy": noisy,
            **terms,
        }

    def _iteration(self, engine: PairedDiffusionTrainer, batchdata: Mapping[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = _modalities_of(batchdata, self.modalities, engine.state.device, engine.non_blocking)
        self.network.train()
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        scaler = getattr(engine, "scaler", None)
        device_type = torch.device(engine.state.device).type
        with torch.autocast(device_type, enabled=bool(engine.amp and scaler is not None)):
            result = self.compute_losses(images, engine.state.epoch)
        loss = result["loss"]
        if engine.amp and scaler is not None:
            scaler.scale(loss).backward()
            for optimizer in self.optimizers.values():
                scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            for optimizer in self.optimizers.values():
                optimizer.step()
        output = {key: float(value.detach()) for key, value in result.items() if key not in ("loss", "noisy")}
        output.update({"loss": loss.detach(), "images": images, "noisy": result["noisy"]})
        engine.state.output = output
        return output


class PairedDiffusionEvaluator(Evaluator):
    """Validation noise loss of paired denoisers with fixed noise and timesteps (seeded per batch index).

    Args:
        device: device.
        val_data_loader: yields dicts with one image per modality key.
        network: ``nn.ModuleDict`` of denoisers keyed by modality.
        scheduler: the training noise scheduler.
        modalities: modality keys in condition order.
        loss_function: noise loss. Default ``MSELoss``.
        seed: base seed of the validation noise. Default 0.
        Other arguments as MONAI's ``Evaluator``.

    ``engine.state.output`` holds ``val_loss`` (the batch's summed noise loss, a float for ignite metrics such as
    ``Average``) and ``val_loss_<modality>``.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: nn.ModuleDict,
        scheduler: Scheduler,
        modalities: Sequence[str] = ("ct", "pet", "mask"),
        loss_function: Callable | None = None,
        seed: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        decollate: bool = False,
    ) -> None:
        modalities = list(modalities)
        _check_networks(network, modalities)
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            amp=amp,
            decollate=decollate,
            **extra,
        )
        self.network = network
        self.noise_scheduler = scheduler
        self.modalities = modalities
        self.loss_function = loss_function if loss_function is not None else nn.MSELoss()
        self.seed = int(seed)

    def _iteration(self, engine: PairedDiffusionEvaluator, batchdata: Mapping[str, Any]) -> dict:
        images = _modalities_of(batchdata, self.modalities, engine.state.device, engine.non_blocking)
        reference = images[self.modalities[0]]
        generator = torch.Generator().manual_seed(self.seed + engine.state.iteration)
        timesteps = torch.randint(
            0, self.noise_scheduler.num_train_timesteps, (reference.shape[0],), generator=generator
        ).to(reference.device)
        noises = {
            m: torch.randn(images[m].shape, generator=generator).to(images[m].device, images[m].dtype)
            for m in self.modalities
        }
        noisy = {m: self.noise_scheduler.add_noise(images[m], noises[m], timesteps) for m in self.modalities}
        self.network.eval()
        with torch.no_grad():
            losses = {
                m: self.loss_function(
                    self.network[m](noisy[m], timesteps, stack_conditions(noisy, self.modalities, m)), noises[m]
                ).mean()
                for m in self.modalities
            }
        total = sum(losses.values())
        output = {f"val_loss_{m}": float(value) for m, value in losses.items()}
        output["val_loss"] = float(total)
        engine.state.output = output
        return output


class PairedDiffusionInferer(Inferer):
    """Joint sampling of paired denoisers, with optional noise seeding from a real sample.

    Args:
        scheduler: the training noise scheduler (its ``add_noise`` is the forward process used for seeding).
        modalities: modality keys in condition order. Default ("ct", "pet", "mask").

    ``__call__(inputs, network, timesteps)`` predicts every modality's noise for a dict of noisy images;
    ``sample(...)`` runs the joint reverse process.
    """

    def __init__(self, scheduler: Scheduler, modalities: Sequence[str] = ("ct", "pet", "mask")) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.modalities = list(modalities)

    def __call__(  # type: ignore[override]
        self, inputs: Mapping[str, torch.Tensor], network: nn.ModuleDict, timesteps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each network's prediction for the noisy images ``inputs`` at ``timesteps`` (B,)."""
        return {
            m: network[m](inputs[m], timesteps, stack_conditions(inputs, self.modalities, m)) for m in self.modalities
        }

    def seed_timestep(self, scheduler: Scheduler, fraction: float) -> int:
        """The first timestep of a seeded run: the largest kept timestep <= ``fraction * (T - 1)``."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"seed fraction must be in (0, 1], got {fraction}")
        limit, kept = self._kept_up_to(scheduler, fraction, lowest=0)
        if kept is None:
            raise ValueError(f"no sampling timestep <= {limit} (fraction {fraction}); use more sampling steps")
        return kept

    def _kept_up_to(self, scheduler: Scheduler, fraction: float, lowest: int) -> tuple[int, int | None]:
        """``(limit, t)``: ``limit = round(fraction * (T - 1))`` and the largest kept timestep ``lowest <= t <= limit``
        of ``scheduler`` (None if there is none)."""
        limit = round(fraction * (self.scheduler.num_train_timesteps - 1))
        kept = scheduler.timesteps[(scheduler.timesteps <= limit) & (scheduler.timesteps >= lowest)]
        return limit, int(kept[0]) if len(kept) else None

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int],
        network: nn.ModuleDict,
        scheduler: Scheduler | None = None,
        generator: torch.Generator | None = None,
        reference: Mapping[str, torch.Tensor] | None = None,
        seed_fraction: float | None = None,
        device: str | torch.device = "cpu",
        verbose: bool = False,
        refine_rounds: int = 0,
        refine_fraction: float = 0.1,
    ) -> dict[str, torch.Tensor]:
        """Sample every modality jointly.

        Args:
            shape: (B, C, *spatial) of each modality's sample.
            network: ``nn.ModuleDict`` of denoisers keyed by modality.
            scheduler: sampler with ``timesteps`` set (``RespacedDDPMScheduler``, ``DPMSolverMultistepScheduler``,
                ...); default the inferer's scheduler. Each modality steps with its own deep copy.
            generator: random generator (on ``device``) of the start noise and of the stochastic steps.
            reference: noise seeding: real images per modality, each of ``shape``, scaled like the training data.
            seed_fraction: noise seeding: start at the largest kept timestep <= ``seed_fraction * (T - 1)`` from the
                reference noised to it (the paper: 0.8-0.9). Both or neither of ``reference``/``seed_fraction``.
            device: device of the samples.
            verbose: progress bar.
            refine_rounds: agreement refinement: after sampling, this many times noise the finished triple again to
                the largest non-zero kept timestep <= ``refine_fraction * (T - 1)`` (fresh noise per modality, the
                forward process) and run the sampler down from there. At low noise each network sees the others'
                nearly finished images, so a mask and a PET hot spot that disagree get further steps to agree. Each
                round costs the sampler's kept timesteps at and below that one (``refinement_evaluations``). It must
                restart below a seeded start. Default 0 (off).
            refine_fraction: agreement refinement: the fraction of the schedule each round goes back to.

        Returns:
            dict modality -> (B, C, *spatial) sample.
        """
        _check_networks(network, self.modalities)
        if (reference is None) != (seed_fraction is None):
            raise ValueError("noise seeding needs both `reference` and `seed_fraction` (or neither)")
        scheduler = scheduler or self.scheduler
        refine_start = self.refinement_start(scheduler, refine_rounds, refine_fraction)
        timesteps = scheduler.timesteps
        shape = tuple(int(s) for s in shape)
        states = {m: torch.randn(shape, generator=generator, device=device) for m in self.modalities}
        if reference is not None:
            start = self.seed_timestep(scheduler, float(seed_fraction))
            if refine_start >= start:
                raise ValueError(
                    f"refine_fraction {refine_fraction} restarts refinement at timestep {refine_start}, not below the "
                    f"seeded start {start} (seed_fraction {seed_fraction}): it would undo the seeding; lower it"
                )
            timesteps = timesteps[timesteps <= start]
            start_t = torch.full((shape[0],), start, dtype=torch.long, device=device)
            for m in self.modalities:
                image = torch.as_tensor(reference[m]).to(device=device, dtype=states[m].dtype)
                if tuple(image.shape) != shape:
                    raise ValueError(f"reference '{m}' must have shape {shape}, got {tuple(image.shape)}")
                states[m] = self.scheduler.add_noise(image, states[m], start_t)
        states = self._denoise(states, network, scheduler, timesteps, generator, verbose, "sampling")
        for round_index in range(int(refine_rounds)):
            restart = torch.full((shape[0],), refine_start, dtype=torch.long, device=device)
            for m in self.modalities:
                noise = torch.randn(shape, generator=generator, device=device)
                states[m] = self.scheduler.add_noise(states[m], noise, restart)
            states = self._denoise(
                states,
                network,
                scheduler,
                scheduler.timesteps[scheduler.timesteps <= refine_start],
                generator,
                verbose,
                f"refinement {round_index + 1}/{refine_rounds}",
            )
        return states

    def refinement_start(self, scheduler: Scheduler, rounds: int, fraction: float) -> int:
        """The timestep each agreement-refinement round restarts from (-1 when ``rounds`` is 0)."""
        if isinstance(rounds, bool) or not isinstance(rounds, (int, float)) or int(rounds) != rounds or rounds < 0:
            raise ValueError(f"refine_rounds must be a non-negative integer, got {rounds}")
        if rounds == 0:
            return -1
        if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise ValueError(f"refine_fraction must be in (0, 1), got {fraction}")
        limit, kept = self._kept_up_to(scheduler, fraction, lowest=1)
        if kept is None:
            raise ValueError(
                f"refine_fraction {fraction}: no sampling timestep in (0, {limit}]; raise it or raise "
                "num_inference_steps"
            )
        return kept

    def refinement_evaluations(self, scheduler: Scheduler, rounds: int, fraction: float) -> int:
        """Network evaluations per modality that ``rounds`` refinement rounds add (``scheduler.timesteps`` set)."""
        start = self.refinement_start(scheduler, rounds, fraction)
        return int(rounds) * int((scheduler.timesteps <= start).sum())

    def _denoise(
        self,
        states: dict[str, torch.Tensor],
        network: nn.ModuleDict,
        scheduler: Scheduler,
        timesteps: torch.Tensor,
        generator: torch.Generator | None,
        verbose: bool,
        description: str,
    ) -> dict[str, torch.Tensor]:
        """Step every modality jointly along ``timesteps`` (each with a fresh copy of ``scheduler``)."""
        schedulers = {m: copy.deepcopy(scheduler) for m in self.modalities}
        batch = next(iter(states.values())).shape[0]
        device = next(iter(states.values())).device
        for t in tqdm(timesteps, disable=not verbose, desc=description, leave=False):
            batch_t = torch.full((batch,), int(t), dtype=torch.long, device=device)
            predictions = self(states, network, batch_t)
            for m in self.modalities:
                states[m], _ = schedulers[m].step(predictions[m], t, states[m], generator=generator)
        return states
