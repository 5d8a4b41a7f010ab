"""Helpers to run bundle configs in-process (``ConfigWorkflow``) at tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[2]


def config_files(bundle: str, *names: str) -> list[str]:
    return [str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.yaml") for name in names]


def make_workflow(bundle: str, names: tuple[str, ...], workflow_type: str | None, **overrides: Any) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=config_files(bundle, *names), workflow_type=workflow_type, logging_file=False, **overrides
    )
    workflow.initialize()
    return workflow


def run_workflow(bundle: str, names: tuple[str, ...], workflow_type: str | None = None, **overrides: Any) -> Any:
    workflow = make_workflow(bundle, names, workflow_type, **overrides)
    result = workflow.run()
    workflow.finalize()
    return result


def load_plain_weights(
    path: Path, bundle: str, names: tuple[str, ...], net_key: str = "network_def", **overrides: Any
) -> torch.nn.Module:
    """Load ``path`` as a consumer does: ``torch.load(weights_only=True)``, a flat dict of tensors, then
    ``load_state_dict`` (strict) into ``net_key`` of the bundle's inference config; returns that network."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state, f"{path} holds {type(state).__name__}"
    assert all(isinstance(v, torch.Tensor) for v in state.values()), f"{path} is not a flat state dict of tensors"
    parser = ConfigParser()
    parser.read_config(config_files(bundle, *names))
    parser.update(overrides)
    network = parser.get_parsed_content(net_key)
    network.load_state_dict(state)
    return network


def error_chain(error: BaseException) -> str:
    """Messages of ``error`` and every exception it was raised from (config errors wrap the user-facing one)."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def run_torchrun(bundle: str, names: tuple[str, ...], args: list[str], port: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m monai.bundle run`` of ``names`` (CPU, gloo) from the repository root."""
    files = "[" + ",".join(f"'{f}'" for f in config_files(bundle, *names)) + "]"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    return subprocess.run(
        [*torchrun, "-m", "monai.bundle", "run", "--config_file", files, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
