"""Tests of common/handlers.py: training-state checkpoints and inference files with a tiny ignite trainer, resuming
from them, and the fused EMA update."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn

from common.data import LatentStats
from common.handlers import FusedEMAHandler, ResumeFromLatest, TrainingCheckpointer

EPOCH_LENGTH = 2
DATA = [torch.ones(1, 2)] * EPOCH_LENGTH


class Run:
    """A tiny network, an SGD optimiser with momentum (so it has state) and a trainer that updates the network."""

    def __init__(self, seed: int = 0, fail_at_iteration: int | None = None, out_features: int = 1) -> None:
        torch.manual_seed(seed)
        self.network = nn.Linear(2, out_features)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1, momentum=0.9)
        self.epochs: list[int] = []
        self.started: dict = {}

        def update(engine: Engine, batch: torch.Tensor) -> float:
            if engine.state.iteration == fail_at_iteration:
                raise RuntimeError("interrupted")
            self.optimizer.zero_grad()
            loss = self.network(batch).square().sum()
            loss.backward()
            self.optimizer.step()
            return loss.item()

        self.trainer = Engine(update)
        self.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: self.epochs.append(e.state.epoch))

    def objects(self) -> dict:
        return {"network": self.network, "optimizer": self.optimizer}

    def record_start(self) -> None:
        """After the handlers attached before it (the resume loader), note where the run starts."""

        def record(engine: Engine) -> None:
            self.started = {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "network": {k: v.clone() for k, v in self.network.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            }

        self.trainer.add_event_handler(Events.STARTED, record)

    def run(self, max_epochs: int) -> None:
        self.trainer.run(DATA, max_epochs=max_epochs)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------- checkpointer


WEIGHTS = {"model.pt": "network"}


@pytest.mark.parametrize(
    "max_epochs, save_interval, n_saved, kept",
    [(7, 2, 2, [6, 7]), (11, 1, 2, [10, 11]), (3, 1, 5, [1, 2, 3]), (4, 0, 1, [4])],
)
def test_checkpointer_keeps_the_last_files_and_saves_the_end_state(
    tmp_path: Path, max_epochs: int, save_interval: int, n_saved: int, kept: list[int]
) -> None:
    run = Run()
    checkpointer = TrainingCheckpointer(
        str(tmp_path), run.objects(), save_interval=save_interval, n_saved=n_saved, inference_files=WEIGHTS
    )
    checkpointer.attach(run.trainer)
    run.run(max_epochs)
    assert listing(tmp_path) == sorted([f"checkpoint_epoch={e}.pt" for e in kept] + ["model.pt"])
    final = load(tmp_path / f"checkpoint_epoch={max_epochs}.pt")
    assert sorted(final) == ["network", "optimizer", "trainer"]
    assert final["trainer"]["iteration"] == max_epochs * EPOCH_LENGTH
    assert all(torch.equal(v, final["network"][k]) for k, v in run.network.state_dict().items())
    for epoch in kept:
        assert load(tmp_path / f"checkpoint_epoch={epoch}.pt")["trainer"]["iteration"] == epoch * EPOCH_LENGTH
    weights = load(tmp_path / "model.pt")  # the inference file: a plain state dict of the network
    assert sorted(weights) == ["bias", "weight"]
    assert all(torch.equal(v, weights[k]) for k, v in run.network.state_dict().items())


def test_checkpointer_saves_the_weights_of_that_epoch(tmp_path: Path) -> None:
    run = Run()
    TrainingCheckpointer(str(tmp_path), run.objects(), save_interval=1, n_saved=3, inference_files=WEIGHTS).attach(
        run.trainer
    )
    snapshots: dict[int, dict] = {}
    inference: dict[int, dict] = {}
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: snapshots.update({e.state.epoch: {k: v.clone() for k, v in run.network.state_dict().items()}}),
    )
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: inference.update({e.state.epoch: load(tmp_path / "model.pt")})
    )  # runs after the checkpointer's handler: model.pt is rewritten with every checkpoint
    run.run(3)
    assert not torch.equal(snapshots[2]["weight"], snapshots[3]["weight"])
    for epoch in (2, 3):
        saved = load(tmp_path / f"checkpoint_epoch={epoch}.pt")["network"]
        assert all(torch.equal(v, saved[k]) for k, v in snapshots[epoch].items())
    for epoch in (1, 2, 3):
        assert all(torch.equal(v, inference[epoch][k]) for k, v in snapshots[epoch].items())


def test_checkpointer_unwraps_data_parallel(tmp_path: Path) -> None:
    run = Run()
    wrapped = {"network": nn.DataParallel(run.network)}
    TrainingCheckpointer(str(tmp_path), wrapped, save_interval=0, inference_files=WEIGHTS).attach(run.trainer)
    run.run(1)
    assert sorted(load(tmp_path / "checkpoint_epoch=1.pt")["network"]) == ["bias", "weight"]
    assert sorted(load(tmp_path / "model.pt")) == ["bias", "weight"]


def test_checkpointer_writes_holder_buffers_as_json(tmp_path: Path) -> None:
    run = Run()
    stats = LatentStats(pixdim=(2.0, 2.0, 3.0))
    stats.set_scale(0.5)
    files = {"model.pt": "network", "latent_scale.json": "stats"}
    objects = {**run.objects(), "stats": stats}
    TrainingCheckpointer(str(tmp_path), objects, save_interval=1, inference_files=files).attach(run.trainer)
    run.run(1)
    assert json.loads((tmp_path / "latent_scale.json").read_text()) == {
        "scale_factor": 0.5,
        "pixdim": [2.0, 2.0, 3.0],
        "computed": True,
    }
    assert float(load(tmp_path / "checkpoint_epoch=1.pt")["stats"]["scale_factor"]) == 0.5


def test_checkpointer_keeps_the_last_checkpoint_files_when_training_fails(tmp_path: Path) -> None:
    run = Run(fail_at_iteration=5)
    TrainingCheckpointer(str(tmp_path), run.objects(), save_interval=1, n_saved=5, inference_files=WEIGHTS).attach(
        run.trainer
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        run.run(4)
    assert listing(tmp_path) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    newest = load(tmp_path / "checkpoint_epoch=2.pt")["network"]
    weights = load(tmp_path / "model.pt")
    assert all(torch.equal(v, weights[k]) for k, v in newest.items())  # the weights match the newest state


@pytest.mark.parametrize(
    "files, match",
    [
        (
            {"model.pt": "ema"},
            r"'model.pt' names entry 'ema', which save_dict lacks; it has \['network', 'optimizer'\]",
        ),
        ({"model.ckpt": "network"}, r"'model.ckpt' must be a file name ending in one of \('.pt', '.json'\)"),
        ({"sub/model.pt": "network"}, r"'sub/model.pt' must be a file name"),
    ],
    ids=["unknown entry", "suffix", "path"],
)
def test_checkpointer_rejects_inference_files(tmp_path: Path, files: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainingCheckpointer(str(tmp_path), Run().objects(), inference_files=files)


@pytest.mark.parametrize("save_interval, n_saved", [(-1, 2), (1, 0)])
def test_checkpointer_rejects_arguments(tmp_path: Path, save_interval: int, n_saved: int) -> None:
    with pytest.raises(ValueError, match=f"got {save_interval} and {n_saved}"):
        TrainingCheckpointer(str(tmp_path), {}, save_interval=save_interval, n_saved=n_saved)


# ------------------------------------------------------------------------------------------------------- resuming


def interrupted_run(ckpt_dir: Path) -> None:
    """Train with a checkpoint every epoch until iteration 7 (epoch 4) fails: epochs 2 and 3 are kept."""
    run = Run(seed=0, fail_at_iteration=7)
    TrainingCheckpointer(str(ckpt_dir), run.objects(), save_interval=1, n_saved=2).attach(run.trainer)
    with pytest.raises(RuntimeError, match="interrupted"):
        run.run(5)
    assert listing(ckpt_dir) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]


def test_resume_continues_from_the_newest_checkpoint(tmp_path: Path) -> None:
    interrupted_run(tmp_path)
    saved = load(tmp_path / "checkpoint_epoch=3.pt")
    run = Run(seed=1)
    ResumeFromLatest(str(tmp_path), run.objects()).attach(run.trainer)
    TrainingCheckpointer(str(tmp_path), run.objects(), save_interval=1, n_saved=2).attach(run.trainer)
    run.record_start()
    run.run(5)
    assert (run.started["epoch"], run.started["iteration"]) == (3, 3 * EPOCH_LENGTH)
    assert all(torch.equal(v, saved["network"][k]) for k, v in run.started["network"].items())
    momentum = run.started["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, saved["optimizer"]["state"][0]["momentum_buffer"])
    assert run.epochs == [4, 5]
    assert run.trainer.state.iteration == 5 * EPOCH_LENGTH
    assert listing(tmp_path) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]


def test_resume_continues_a_finished_run_from_its_end_state(tmp_path: Path) -> None:
    first = Run(seed=0)
    TrainingCheckpointer(str(tmp_path), first.objects(), save_interval=2, n_saved=2).attach(first.trainer)
    first.run(3)  # checkpoints at epoch 2 (interval) and 3 (end)
    run = Run(seed=1)
    ResumeFromLatest(str(tmp_path), run.objects()).attach(run.trainer)
    run.record_start()
    run.run(5)
    assert (run.started["epoch"], run.started["iteration"]) == (3, 3 * EPOCH_LENGTH)
    assert run.epochs == [4, 5]


def test_resume_disabled_does_nothing(tmp_path: Path) -> None:
    interrupted_run(tmp_path)
    run = Run(seed=1)
    initial = {k: v.clone() for k, v in run.network.state_dict().items()}
    ResumeFromLatest(str(tmp_path), run.objects(), enabled=False).attach(run.trainer)
    run.record_start()
    run.run(2)
    assert run.epochs == [1, 2]
    assert all(torch.equal(v, initial[k]) for k, v in run.started["network"].items())


@pytest.mark.parametrize("make_folder", [False, True], ids=["missing folder", "empty folder"])
def test_resume_without_checkpoint_trains_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_folder: bool
) -> None:
    folder = tmp_path / "models"
    if make_folder:
        folder.mkdir()
    caplog.set_level(logging.INFO, logger="common.handlers")
    run = Run()
    ResumeFromLatest(str(folder), run.objects()).attach(run.trainer)
    run.run(2)
    assert run.epochs == [1, 2]
    assert any("training from scratch" in r.getMessage() for r in caplog.records)


def test_resume_rejects_a_checkpoint_of_another_network_before_loading(tmp_path: Path) -> None:
    interrupted_run(tmp_path)
    run = Run(seed=1, out_features=3)
    initial = {k: v.clone() for k, v in run.network.state_dict().items()}
    handler = ResumeFromLatest(str(tmp_path), {"optimizer": run.optimizer, "network": run.network})
    with pytest.raises(ValueError, match=r"checkpoint_epoch=3.pt \[network\].*layer 'weight' has shape \(1, 2\)"):
        handler.attach(run.trainer)
    assert all(torch.equal(v, initial[k]) for k, v in run.network.state_dict().items())
    assert run.optimizer.state_dict()["state"] == {}
    assert run.trainer.state.epoch == 0


def test_resume_rejects_a_checkpoint_lacking_an_entry(tmp_path: Path) -> None:
    interrupted_run(tmp_path)
    run = Run(seed=1)
    ema = nn.Linear(2, 1)
    with pytest.raises(KeyError, match=r"lacks \['ema'\]; it has \['network', 'optimizer', 'trainer'\]"):
        ResumeFromLatest(str(tmp_path), {**run.objects(), "ema": ema}).attach(run.trainer)


def _one_sgd_step(max_norm):
    """One SupervisedTrainer step of plain SGD (lr 1) on a linear layer with large gradients; returns the weight
    change and the handler."""
    from monai.engines import SupervisedTrainer

    from common.handlers import GradientClipping

    torch.manual_seed(0)
    network = nn.Linear(4, 3)
    before = copy.deepcopy(network.state_dict())
    data = [{"image": 100 * torch.randn(2, 4), "label": torch.zeros(2, 3)}]
    handler = GradientClipping(max_norm)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
        loss_function=nn.MSELoss(),
        train_handlers=[handler],
    )
    trainer.run()
    change = [before[k] - v for k, v in network.state_dict().items()]
    return torch.cat([c.flatten() for c in change]), handler


def test_gradient_clipping_scales_the_step_to_the_norm_and_none_leaves_it():
    free, _ = _one_sgd_step(None)
    assert free.norm() > 10  # the unclipped SGD step is the whole (large) gradient
    clipped, handler = _one_sgd_step(1.0)
    torch.testing.assert_close(clipped.norm(), torch.tensor(1.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clipped, free / free.norm(), atol=1e-5, rtol=1e-4)  # same direction
    assert handler.last_norm == pytest.approx(float(free.norm()), rel=1e-5)
    unchanged, _ = _one_sgd_step(1e9)
    torch.testing.assert_close(unchanged, free)


def test_gradient_clipping_refuses_a_negative_norm():
    from common.handlers import GradientClipping

    with pytest.raises(ValueError, match="grad_clip_norm.*-1"):
        GradientClipping(-1.0)


def _count_into(engine: Engine, buffer: torch.Tensor) -> None:
    buffer.add_(1.0)


@pytest.mark.parametrize("handle_buffers", ["copy", "update"])
def test_fused_ema_matches_ignites_update(handle_buffers: str) -> None:
    """The same EMA weights and buffers as ignite's EMAHandler, warm-up included, after a few iterations."""
    emas = []
    for handler in (EMAHandler, FusedEMAHandler):
        run = Run(seed=3)
        run.network.register_buffer("running", torch.zeros(1))
        run.trainer.add_event_handler(Events.ITERATION_COMPLETED, _count_into, run.network.running)
        ema = handler(run.network, momentum=0.3, momentum_warmup=0.1, warmup_iters=3, handle_buffers=handle_buffers)
        ema.attach(run.trainer)
        run.trainer.run(DATA, max_epochs=3)
        emas.append(ema.ema_model.state_dict())
    assert emas[1]["running"].item() > 0 and not torch.equal(emas[1]["weight"], Run(seed=3).network.weight)
    for name, value in emas[0].items():
        torch.testing.assert_close(emas[1][name], value, rtol=1e-6, atol=1e-7, msg=name)
