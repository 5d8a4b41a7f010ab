"""Test-session settings shared by every test module."""

import os


def pytest_configure(config) -> None:
    # Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker, and every process a test
    # starts, keeps to one intra-op thread, so that two workers do not spin against each other for the same cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
