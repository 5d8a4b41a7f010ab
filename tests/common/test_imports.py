"""Every package of ``common`` imports on its own, first, in a fresh interpreter (no import cycle between layers).

A bundle config names a class by its dotted path (``common.losses.AutoencoderLoss``), so any package can be the
first one a process imports; a cycle then fails only in that process (as in torchrun workers), not in a test run
that happened to import another package first.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import common

ROOT = Path(common.__file__).resolve().parent.parent


def test_each_common_package_imports_first_without_a_cycle() -> None:
    names = ["common"] + [f"common.{m.name}" for m in pkgutil.iter_modules(common.__path__)]
    # one process, the project's modules dropped from sys.modules before each import (torch and MONAI stay loaded)
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'common' or m.startswith('common.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        print(f'{name}: {type(error).__name__}: {error}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"imported first, these packages fail:\n{result.stdout}"
    assert len(names) > 8  # the packages were found
