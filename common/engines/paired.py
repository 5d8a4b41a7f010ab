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

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import Evaluator, Trainer
from monai.networks.schedulers import Scheduler
from torch import nn

from common.engines.prepare_batch import offset_noise
from common.networks.paired_denoiser import check_paired_networks, stack_conditions
from common.schedulers import predict_original

__all__ = ["paired_optimizers", "distributed_networks", "PairedDiffusionTrainer", "PairedDiffusionEvaluator"]


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
        check_paired_networks(network, modalities)
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
        check_paired_networks(network, modalities)
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
