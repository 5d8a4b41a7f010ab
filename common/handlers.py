"""Ignite handlers for the bundle trainers: atomic checkpointing and resuming from the newest checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from torch import nn

from common.checkpoint import atomic_torch_save, check_state_dict_fits, latest_checkpoint, read_checkpoint, unwrap

__all__ = ["EngineStateAdapter", "TrainingCheckpointer", "ResumeFromLatest"]

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
    """Save ``checkpoint_epoch=N.pt`` every ``save_interval`` epochs and ``final_filename`` when training completes.

    Each file is a dict of state dicts of ``save_dict`` plus the trainer's own state under ``engine_key`` (epoch,
    iteration), so :class:`ResumeFromLatest` can continue a run. Files are written to a temporary name and renamed
    (a crash never leaves a corrupt checkpoint), only on rank 0 under ``torchrun``; the final file is written only
    on completion, so a run that fails does not replace the ``model.pt`` of an earlier run. (MONAI's
    ``CheckpointSaver`` writes non-atomically and saves the final file on exceptions too.)

    Args:
        save_dir: output folder (the bundle's ``models/``).
        save_dict: objects with ``state_dict()`` (network, EMA network, optimiser, lr scheduler); DDP wrappers are
            unwrapped.
        save_interval: epochs between interval checkpoints; 0 disables them.
        n_saved: interval checkpoints kept (older ones are deleted).
        final_filename: name of the file written at the end.
        engine_key: key of the trainer state in the files.
        prefix: interval checkpoints are ``<prefix>_epoch=N.pt``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        save_interval: int = 10,
        n_saved: int = 2,
        final_filename: str = "model.pt",
        engine_key: str = "trainer",
        prefix: str = "checkpoint",
    ) -> None:
        if save_interval < 0 or n_saved < 1:
            raise ValueError(f"save_interval must be >= 0 and n_saved >= 1, got {save_interval} and {n_saved}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.final_filename = final_filename
        self.engine_key = engine_key
        self.prefix = prefix

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

    def save_interval_checkpoint(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        path = atomic_torch_save(self.state(), self.save_dir / f"{self.prefix}_epoch={engine.state.epoch}.pt")
        logger.info(f"saved checkpoint '{path}'")
        kept = sorted(self.save_dir.glob(f"{self.prefix}_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[-1]))
        for old in kept[: -self.n_saved]:
            old.unlink()

    def save_final(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        path = atomic_torch_save(self.state(), self.save_dir / self.final_filename)
        logger.info(f"training completed at epoch {engine.state.epoch}: saved '{path}'")


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
