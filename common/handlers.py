"""Ignite handlers for the bundle trainers: atomic checkpoints (training state + inference files), resuming, and an
EMA of the weights updated with one fused call per iteration."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.handlers import CheckpointLoader
from torch import nn

from common.checkpoint import (
    atomic_torch_save,
    check_state_dict_fits,
    latest_checkpoint,
    plain_state_dict,
    read_checkpoint,
    save_state_json,
    unwrap,
)

__all__ = ["EngineStateAdapter", "TrainingCheckpointer", "ResumeFromLatest", "GradientClipping", "FusedEMAHandler"]

logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class EngineStateAdapter:
    """The trainer's state as a checkpoint entry: plain values only, so checkpoints load with ``weights_only=True``.

    Some MONAI engines (``AdversarialTrainer``) list their networks, optimisers and loss objects among the engine's
    ``state_dict`` user keys, which would pickle whole modules into the file. They are saved separately (as state
    dicts) by the checkpointer, so only numbers, strings and None are kept here; on loading, the user keys the file
    does not hold are taken from the live engine (they are the same objects), which ignite requires.
    """

    _PLAIN = (int, float, str, bool, type(None))

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        return {k: v for k, v in self.engine.state_dict().items() if isinstance(v, self._PLAIN)}

    def load_state_dict(self, state_dict: dict) -> None:
        full = dict(state_dict)
        for key in self.engine._state_dict_user_keys:
            full.setdefault(key, getattr(self.engine.state, key, None))
        self.engine.load_state_dict(full)


class TrainingCheckpointer:
    """Write the training state every ``save_interval`` epochs and at the end, and the inference files each time.

    Two kinds of files go to ``save_dir`` (see :mod:`common.checkpoint`):

    - the **training state** ``<prefix>_epoch=N.pt``: a dict of the state dicts of ``save_dict`` plus the trainer's
      own state under ``engine_key`` (epoch, iteration), which :class:`ResumeFromLatest` continues from. One is
      written every ``save_interval`` epochs and one when training completes (unless that epoch was just saved),
      so ``--resume true`` also continues a finished run; the last ``n_saved`` are kept.
    - the **inference files** of ``inference_files`` (file name -> entry of ``save_dict``), rewritten with each
      training state: ``.pt`` files hold the entry's plain state dict on CPU (``model.pt`` = the EMA weights: what
      consumers ``load_state_dict``), ``.json`` files the entry's buffers as JSON (small values inference needs,
      such as the latent scale factor; :func:`common.checkpoint.save_state_json`).

    Every file is written to a temporary name and renamed (a crash never leaves a corrupt file), only on rank 0
    under ``torchrun``. A run that fails keeps the files of its last checkpoint; the inference files are written
    first, so a crash between the two leaves them at most one checkpoint newer than the newest training state, never
    older. (MONAI's ``CheckpointSaver`` writes non-atomically and saves on exceptions too.)

    Args:
        save_dir: output folder (the bundle's ``models/``).
        save_dict: objects with ``state_dict()`` (network, EMA network, optimiser, lr scheduler, ...); DDP wrappers
            are unwrapped.
        save_interval: epochs between checkpoints; 0: only at the end.
        n_saved: training-state files kept (older ones are deleted).
        inference_files: file name (``.pt`` or ``.json``) -> key of ``save_dict`` written there, e.g.
            ``{"model.pt": "ema"}``.
        engine_key: key of the trainer state in the training-state files.
        prefix: training-state files are ``<prefix>_epoch=N.pt``.
    """

    SUFFIXES = (".pt", ".json")

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        save_interval: int = 10,
        n_saved: int = 2,
        inference_files: Mapping[str, str] | None = None,
        engine_key: str = "trainer",
        prefix: str = "checkpoint",
    ) -> None:
        if save_interval < 0 or n_saved < 1:
            raise ValueError(f"save_interval must be >= 0 and n_saved >= 1, got {save_interval} and {n_saved}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.inference_files = dict(inference_files or {})
        for name, key in self.inference_files.items():
            if Path(name).suffix not in self.SUFFIXES or Path(name).name != name:
                raise ValueError(
                    f"inference_files: '{name}' must be a file name ending in one of {self.SUFFIXES}, not a path"
                )
            if key not in self.save_dict:
                raise ValueError(
                    f"inference_files: '{name}' names entry '{key}', which save_dict lacks; it has {sorted(save_dict)}"
                )
        self.engine_key = engine_key
        self.prefix = prefix
        self._saved_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        self.save_dict[self.engine_key] = EngineStateAdapter(engine)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_interval_checkpoint)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def state(self) -> dict:
        return {
            key: unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj.state_dict()
            for key, obj in self.save_dict.items()
        }

    def save_inference_files(self) -> list[Path]:
        """Write the inference files from the current state of their ``save_dict`` entries."""
        written = []
        for name, key in self.inference_files.items():
            target = self.save_dir / name
            if target.suffix == ".json":
                written.append(save_state_json(self.save_dict[key], target))
            else:
                written.append(atomic_torch_save(plain_state_dict(self.save_dict[key]), target))
        return written

    def save_interval_checkpoint(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        written = self.save_inference_files()  # first: a crash after it leaves them newer, never older, than the state
        path = atomic_torch_save(self.state(), self.save_dir / f"{self.prefix}_epoch={engine.state.epoch}.pt")
        self._saved_iteration = engine.state.iteration
        kept = sorted(self.save_dir.glob(f"{self.prefix}_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[-1]))
        for old in kept[: -self.n_saved]:
            old.unlink()
        logger.info(f"saved checkpoint '{path}'" + (f" and {[p.name for p in written]}" if written else ""))

    def save_final(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        if self._saved_iteration != engine.state.iteration:
            self.save_interval_checkpoint(engine)
        logger.info(f"training completed at epoch {engine.state.epoch}: files in '{self.save_dir}'")


class ResumeFromLatest:
    """Restore the objects of ``load_dict`` and the trainer state from the newest ``checkpoint_*.pt`` at start.

    Args:
        ckpt_dir: folder the :class:`TrainingCheckpointer` writes to.
        load_dict: the same objects as the checkpointer's ``save_dict``.
        enabled: the config's ``resume`` switch; when False the handler does nothing.
        engine_key: key of the trainer state in the files.
        prefix: file-name prefix of the interval checkpoints (the checkpointer's ``prefix``), so the stages of a
            multi-stage bundle sharing one folder resume from their own files.

    Networks are checked against the checkpoint before anything is loaded, so a checkpoint written with other
    network settings fails with the first mismatching layer named. At most the epochs since that checkpoint are
    lost.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: dict,
        enabled: bool = True,
        engine_key: str = "trainer",
        prefix: str = "checkpoint",
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.prefix = prefix
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir, f"{self.prefix}_epoch=*.pt")
        if path is None:
            logger.info(f"resume: no checkpoint in '{self.ckpt_dir}', training from scratch")
            return
        load_dict = {**self.load_dict, self.engine_key: EngineStateAdapter(engine)}
        content = read_checkpoint(path, config_key="ckpt_dir")
        missing = [k for k in load_dict if k not in content]
        if missing:
            raise KeyError(f"resume: checkpoint '{path}' lacks {missing}; it has {sorted(content)}")
        for key, obj in load_dict.items():
            if isinstance(obj, nn.Module):
                check_state_dict_fits(obj, content[key], f"{path} [{key}]")
        logger.info(f"resume: restoring {sorted(load_dict)} from '{path}'")
        CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location="cpu").attach(engine)


class GradientClipping:
    """Clip the global gradient norm of the trainer's network before every optimizer step
    (``torch.nn.utils.clip_grad_norm_``).

    Args:
        max_norm: the largest allowed L2 norm of all gradients together; None or 0 clips nothing (the handler does
            not attach), so a config key such as ``grad_clip_norm: null`` keeps a paper's plain optimizer.
        norm_type: the norm (2.0: Euclidean; ``inf``: the largest absolute gradient).

    The clip is a pre-hook on the trainer's optimizer, so it runs wherever ``optimizer.step()`` is called, also
    under AMP: ``GradScaler.step`` unscales the gradients before it calls the step (and skips steps with infinite
    gradients, hook included). The engine must have ``network`` and ``optimizer`` (MONAI's ``SupervisedTrainer``).
    """

    def __init__(self, max_norm: float | None, norm_type: float = 2.0) -> None:
        if max_norm is not None and not max_norm >= 0:
            raise ValueError(f"grad_clip_norm: expected None, 0 (no clipping) or a positive norm, got {max_norm!r}")
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.last_norm: float | None = None
        self._hook = None

    def attach(self, engine: Engine) -> None:
        if self.max_norm:
            # MONAI's trainers attach their handlers before they set engine.network / engine.optimizer
            engine.add_event_handler(Events.STARTED, self._install)

    def _install(self, engine: Engine) -> None:
        if self._hook is not None:  # a second run() of the same engine keeps the one hook
            return
        missing = [name for name in ("network", "optimizer") if getattr(engine, name, None) is None]
        if missing:
            raise TypeError(f"GradientClipping: the engine has no {missing} (expected MONAI's SupervisedTrainer)")
        parameters = [p for p in engine.network.parameters() if p.requires_grad]

        def clip(optimizer, args, kwargs) -> None:
            self.last_norm = float(nn.utils.clip_grad_norm_(parameters, self.max_norm, norm_type=self.norm_type))

        self._hook = engine.optimizer.register_step_pre_hook(clip)


class FusedEMAHandler(EMAHandler):
    """ignite's ``EMAHandler`` (same arguments, momentum warm-up, ``ema_model`` and checkpoint entries) whose update
    ``ema = (1 - momentum) * ema + momentum * model`` is one ``torch._foreach_lerp_`` over all parameters.

    ignite updates parameter by parameter (two in-place kernels each, about 300 launches per iteration for the Swin
    U-Net), which on a CPU costs a few percent of a small model's training step; the fused call does the same
    arithmetic. Buffers follow ``handle_buffers`` as in ignite ("update" falls back to ignite's loop).
    """

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        if self.handle_buffers == "update":
            super()._update_ema_model(engine, name)
            return
        momentum = float(getattr(engine.state, name))
        ema_parameters = list(self.ema_model.parameters())
        model_parameters = [p.detach() for p in self.model.parameters()]
        with torch.no_grad():
            torch._foreach_lerp_(ema_parameters, model_parameters, momentum)
        if self.handle_buffers == "copy":
            for ema_buffer, model_buffer in zip(self.ema_model.buffers(), self.model.buffers()):
                ema_buffer.data = model_buffer.data
