"""Tests of common/checkpoint.py: atomic saving, finding the newest checkpoint, fit checks and weight loading."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from common.checkpoint import (
    atomic_torch_save,
    check_listed_hash,
    check_state_dict_fits,
    file_hash,
    latest_checkpoint,
    load_network_weights,
    load_state_json,
    plain_state_dict,
    read_checkpoint,
    save_state_json,
    unwrap,
)
from common.data import LatentStats


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def same_weights(a: nn.Module, b: nn.Module | dict) -> bool:
    b_state = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(v, b_state[k]) for k, v in a.state_dict().items())


# -------------------------------------------------------------------------------------------------- atomic saving


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_torch_save_writes_with_umask_permissions(
    tmp_path: Path, umask: Callable[[int], None], mask: int, mode: int
) -> None:
    umask(mask)
    target = atomic_torch_save({"a": torch.arange(3)}, tmp_path / "sub" / "ckpt.pt")
    assert target == tmp_path / "sub" / "ckpt.pt"
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert listing(target.parent) == ["ckpt.pt"]


def test_atomic_torch_save_leaves_nothing_when_saving_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    atomic_torch_save({"epoch": 1}, target)
    before = target.read_bytes()

    def failing_save(obj: object, f: str) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"epoch": 2}, target)
    assert listing(tmp_path) == ["model.pt"]
    assert target.read_bytes() == before


# ------------------------------------------------------------------------------------------------------- latest


def test_latest_checkpoint_uses_the_epoch_number(tmp_path: Path) -> None:
    for epoch, mtime in [(9, 3_000_000), (10, 1_000_000), (2, 2_000_000)]:
        path = tmp_path / f"checkpoint_epoch={epoch}.pt"
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    (tmp_path / "model.pt").write_bytes(b"")
    # epoch=9 is both the newest file and the last name in lexical order
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"


def test_latest_checkpoint_reads_iteration_numbers(tmp_path: Path) -> None:
    for name in ("checkpoint_iteration=99.pt", "checkpoint_iteration=100.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_iteration=100.pt"


@pytest.mark.parametrize("files", [None, [], ["model.pt", "notes.txt"]], ids=["missing", "empty", "no match"])
def test_latest_checkpoint_none(tmp_path: Path, files: list[str] | None) -> None:
    folder = tmp_path / "models"
    if files is not None:
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"")
    assert latest_checkpoint(folder) is None


# ----------------------------------------------------------------------------------------------------- fit check


def _drop_last_bias(state: dict) -> None:
    del state["2.bias"]


def _add_layer(state: dict) -> None:
    state["3.weight"] = torch.zeros(1, 1)


def _wrong_shapes(state: dict) -> None:
    state["0.bias"] = torch.zeros(5)
    state["2.weight"] = torch.zeros(1, 5)


FIT_ERRORS: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing layer": (_drop_last_bias, "checkpoint 'ckpt.pt' does not fit the network: layer '2.bias' is missing"),
    "extra layer": (_add_layer, "it has layer '3.weight' the network lacks"),
    "shape mismatch": (_wrong_shapes, "layer '0.bias' has shape (5,) in the checkpoint, (3,) in the network"),
}


@pytest.mark.parametrize("name", list(FIT_ERRORS))
@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "data_parallel"])
def test_check_state_dict_fits_errors(name: str, wrap: bool) -> None:
    damage, message = FIT_ERRORS[name]
    net = tiny_net()
    state = dict(net.state_dict())
    damage(state)
    with pytest.raises(ValueError) as info:
        check_state_dict_fits(nn.DataParallel(net) if wrap else net, state, "ckpt.pt")
    assert message in str(info.value)


def test_check_state_dict_fits_accepts_a_fitting_state() -> None:
    assert check_state_dict_fits(tiny_net(0), tiny_net(1).state_dict(), "ckpt.pt") is None


def test_unwrap() -> None:
    net = tiny_net()
    assert unwrap(nn.DataParallel(net)) is net
    assert unwrap(net) is net


# ------------------------------------------------------------------------------------------------------- reading


def test_read_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config key 'ckpt_path': weight file '.*absent.pt' .* Train first"):
        read_checkpoint(tmp_path / "absent.pt", hint="Train first.")


@pytest.mark.parametrize(
    "content, match",
    [(b"\x00garbage", "cannot read checkpoint"), (None, "holds a Tensor, not a dict")],
    ids=["corrupt", "not a dict"],
)
def test_read_checkpoint_unusable_file(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "model.pt"
    if content is None:
        torch.save(torch.zeros(2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"config key 'weights': .*{match}"):
        read_checkpoint(path, config_key="weights")


@pytest.mark.parametrize("key", ["ema", "network", None])
@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "data_parallel"])
def test_load_network_weights(tmp_path: Path, key: str | None, wrap: bool) -> None:
    raw, ema = tiny_net(1), tiny_net(2)
    path = tmp_path / "model.pt"
    entries = {"network": raw.state_dict(), "ema": ema.state_dict(), "optimizer": {}}
    torch.save(entries if key is not None else ema.state_dict(), path)
    net = tiny_net(0)
    target = nn.DataParallel(net) if wrap else net
    assert load_network_weights(target, path, key=key) is target
    assert same_weights(net, raw if key == "network" else ema)


def test_load_network_weights_missing_entry(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"network": tiny_net().state_dict(), "optimizer": {}}, path)
    with pytest.raises(KeyError, match=r"has no entry 'ema'; it has \['network', 'optimizer'\]"):
        load_network_weights(tiny_net(), path, key="ema")


def test_load_network_weights_does_not_load_a_misfit(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"ema": nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).state_dict()}, path)
    net = tiny_net(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer '0.weight' has shape \(4, 2\) in the checkpoint, \(3, 2\)"):
        load_network_weights(net, path, key="ema")
    assert same_weights(net, before)


def test_load_network_weights_plain_state_dict_by_default(tmp_path: Path) -> None:
    source = tiny_net(3)
    path = atomic_torch_save(plain_state_dict(nn.DataParallel(source)), tmp_path / "model.pt")
    assert set(torch.load(path, weights_only=True)) == set(source.state_dict())  # no "module." prefix
    net = load_network_weights(tiny_net(0), path)
    assert same_weights(net, source)


def test_load_network_weights_refuses_a_training_checkpoint_as_plain_weights(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"network": tiny_net().state_dict(), "ema": tiny_net().state_dict(), "trainer": {"epoch": 2}}, path)
    with pytest.raises(ValueError, match=r"config key 'ckpt_path': .* is a training checkpoint with entries \['ema',"):
        load_network_weights(tiny_net(), path)


def test_load_network_weights_entry_of_a_plain_state_dict(tmp_path: Path) -> None:
    path = atomic_torch_save(tiny_net().state_dict(), tmp_path / "model.pt")
    with pytest.raises(KeyError, match=r"\(a plain state dict\) has no entry 'network'.*key null"):
        load_network_weights(tiny_net(), path, key="network", config_key="ckpt_path")


def test_load_network_weights_refuses_non_tensor_values(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"0.weight": 1.0, "0.bias": "x"}, path)
    with pytest.raises(ValueError, match=r"does not hold a state dict of tensors"):
        load_network_weights(tiny_net(), path)


def test_plain_state_dict_is_detached_on_cpu() -> None:
    net = tiny_net()
    state = plain_state_dict(net)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
    assert same_weights(net, state)


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "not listed"])
def test_missing_weights_name_the_large_files_entry(tmp_path: Path, listed: bool) -> None:
    bundle = tmp_path / "my_bundle"
    bundle.mkdir()
    entries = "  - path: models/model.pt\n    url: https://example.org/m.pt\n" if listed else "  []\n"
    (bundle / "large_files.yml").write_text(f"large_files:\n{entries}")
    with pytest.raises(FileNotFoundError) as error:
        load_network_weights(
            tiny_net(), bundle / "models" / "model.pt", large_files_entry="models/model.pt", hint="Train first."
        )
    message = str(error.value)
    assert "config key 'ckpt_path'" in message and "'models/model.pt'" in message and "Train first." in message
    assert f"--bundle_path {bundle}" in message
    assert ("It is the large_files.yml entry" in message) == listed
    assert ("No published file is listed" in message) == (not listed)


def test_missing_weights_elsewhere_still_name_the_entry(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"weight file '.*elsewhere.pt'.*large_files.yml entry 'models/model.pt'"
    ):
        read_checkpoint(tmp_path / "elsewhere.pt", large_files_entry="models/model.pt")


# ----------------------------------------------------------------------------------------------- JSON holder state


def test_state_json_round_trip(tmp_path: Path) -> None:
    stats = LatentStats(pixdim=(1.5, 2.0, 2.5))
    stats.set_scale(0.8125)
    path = save_state_json(stats, tmp_path / "models" / "latent_scale.json")
    assert json.loads(path.read_text()) == {"scale_factor": 0.8125, "pixdim": [1.5, 2.0, 2.5], "computed": True}
    loaded = load_state_json(LatentStats(), path, config_key="latent_scale_file")
    assert float(loaded.scale_factor) == 0.8125 and bool(loaded.computed)
    assert loaded.pixdim.tolist() == [1.5, 2.0, 2.5] and loaded.pixdim.dtype == torch.float32
    assert listing(path.parent) == ["latent_scale.json"]  # written atomically, no temporary left


@pytest.mark.parametrize(
    "text, match",
    [
        (None, r"config key 'latent_scale_file': file '.*latent_scale.json' does not exist.*entry 'models/latent"),
        ("{not json", r"is not readable JSON"),
        ("[1, 2]", r"holds a JSON list, not an object"),
        ('{"scale_factor": 1.0, "computed": true}', r"lacks entry 'pixdim'"),
        ('{"scale_factor": 1.0, "pixdim": [1, 1, 1], "computed": true, "x": 1}', r"has layer 'x'"),
        ('{"scale_factor": 1.0, "pixdim": [1, 1], "computed": true}', r"layer 'pixdim' has shape \(2,\)"),
        ('{"scale_factor": "big", "pixdim": [1, 1, 1], "computed": true}', r"not numeric"),
    ],
    ids=["missing", "not json", "not an object", "missing entry", "extra entry", "wrong shape", "not numeric"],
)
def test_load_state_json_rejects(tmp_path: Path, text: str | None, match: str) -> None:
    path = tmp_path / "models" / "latent_scale.json"
    if text is not None:
        path.parent.mkdir()
        path.write_text(text)
    stats = LatentStats()
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        load_state_json(stats, path, "latent_scale_file", large_files_entry="models/latent_scale.json")
    assert float(stats.scale_factor) == 1.0 and not bool(stats.computed)


# ------------------------------------------------------------------------------------------- large-file hashes


def _listed_bundle(tmp_path: Path, hash_val: str | None, hash_type: str = "sha256") -> Path:
    (tmp_path / "b" / "models").mkdir(parents=True)
    weights = tmp_path / "b" / "models" / "w.pt"
    torch.save({"layer.weight": torch.ones(2)}, weights)
    entry = {"path": "models/w.pt", "url": "https://example.org/w.pt", "hash_val": hash_val, "hash_type": hash_type}
    (tmp_path / "b" / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    return weights


def test_file_hash_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_hash(path) == hashlib.sha256(b"abc").hexdigest()
    assert file_hash(path, "MD5") == hashlib.md5(b"abc").hexdigest()
    with pytest.raises(ValueError, match="hash_type 'nope'"):
        file_hash(path, "nope")


def test_listed_hash_is_checked_on_load(tmp_path: Path) -> None:
    weights = _listed_bundle(tmp_path, "0" * 64)
    with pytest.raises(ValueError) as error:
        read_checkpoint(weights, "perceptual_weights", large_files_entry="models/w.pt")
    message = str(error.value)
    assert "perceptual_weights" in message and str(weights) in message
    assert "0" * 64 in message and file_hash(weights) in message  # both hashes
    assert read_checkpoint(weights)  # without the entry nothing is checked


@pytest.mark.parametrize("hash_val", [None, "match"])
def test_matching_or_unrecorded_hash_loads(tmp_path: Path, hash_val: str | None) -> None:
    weights = _listed_bundle(tmp_path, None)
    if hash_val == "match":
        _listed_bundle(tmp_path / "again", file_hash(weights))
        weights = tmp_path / "again" / "b" / "models" / "w.pt"
    assert set(read_checkpoint(weights, large_files_entry="models/w.pt")) == {"layer.weight"}
    check_listed_hash(weights, "models/other.pt")  # not listed: nothing to check


def test_shipped_files_and_unreadable_listings(tmp_path: Path) -> None:
    weights = _listed_bundle(tmp_path, "0" * 64)
    listing = tmp_path / "b" / "large_files.yml"
    content = yaml.safe_load(listing.read_text())
    content["large_files"][0]["url"] = ""  # shipped in a release: retraining in place must not break loading
    listing.write_text(yaml.safe_dump(content))
    check_listed_hash(weights, "models/w.pt")
    listing.write_text("large_files: [unclosed")
    with pytest.raises(ValueError, match=r"large_files\.yml.*is not a readable large_files\.yml"):
        check_listed_hash(weights, "models/w.pt")
