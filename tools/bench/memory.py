"""Peak resident memory of a function, measured in a fresh Python process (for the benchmarks)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["measure_peak_rss"]


_CHILD_CODE = """
import os, pickle, resource, sys, traceback
reply_fd = os.dup(1)
os.dup2(2, 1)  # anything fn prints goes to stderr; the reply alone goes to the original stdout
sys.path[:] = pickle.load(sys.stdin.buffer)


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def high_water_mark():
    try:  # Linux: this process's own peak RSS (ru_maxrss would include the parent's, carried over by exec)
        return status_kib("VmHWM") * 1024.0
    except OSError:  # elsewhere: ru_maxrss, bytes on macOS, KiB on other systems
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) if sys.platform == "darwin" else peak * 1024.0


try:
    fn, args, kwargs, keep = pickle.load(sys.stdin.buffer)
    try:  # reset the peak to the current RSS, so that earlier transient peaks cannot hide fn's
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = status_kib("VmRSS") * 1024.0
    except OSError:
        before = high_water_mark()
    result = fn(*args, **kwargs)
    peak = high_water_mark()
    reply = ("ok", result if keep else None, max(peak - before, 0.0) / 2**20)
except BaseException:
    reply = ("error", traceback.format_exc(), 0.0)
sys.stdout.flush()
with os.fdopen(reply_fd, "wb") as channel:
    pickle.dump(reply, channel)
"""


def measure_peak_rss(
    fn: Callable[..., Any],
    *args: Any,
    keep_result: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> tuple[Any, float]:
    """Run ``fn(*args, **kwargs)`` in a fresh Python process and measure how much it raised the peak resident memory.

    The child is a new interpreter (``sys.executable``, the parent's ``sys.path``) that imports only what unpickling
    ``fn`` and its arguments needs; ``fn`` (a module-level function) and the arguments travel by pickle, so each call
    starts from the same clean state. The figure is the child's peak resident memory during ``fn`` minus its resident
    memory right before the call, in MiB: imports and arguments are in the baseline, and only host memory counts
    (not GPU memory). On Linux the peak is the kernel's ``VmHWM`` (reset to the current RSS just before the call via
    ``/proc/self/clear_refs``): ``getrusage(RUSAGE_SELF).ru_maxrss`` cannot serve there, because Linux carries the
    parent's peak into the child across ``exec``, so a child of a 400 MiB process reports at least 400 MiB.
    Elsewhere ``ru_maxrss`` is used (an allocation below an earlier peak of the child is then not seen).

    RSS is what the process holds, allocator caches included: glibc raises its mmap threshold after freeing large
    blocks and then keeps later ones of that size on the heap, so repeated tile-sized allocations can leave the RSS
    well above what is live (measured: 230 MiB for a loop of tile decodes that needs 60 MiB). To compare
    algorithms rather than allocator history, fix the threshold: ``env={"MALLOC_MMAP_THRESHOLD_": "131072"}``.

    Args:
        fn: picklable (module-level) function.
        *args, **kwargs: its arguments (picklable).
        keep_result: return ``fn``'s result (picklable); False returns None for it (avoids shipping large outputs).
        timeout: seconds before the child is killed (None: no limit).
        env: extra environment variables of the child (e.g. allocator settings).

    Returns:
        (result or None, peak RSS increase in MiB).

    Raises:
        RuntimeError: ``fn`` raised (its traceback is in the message) or the child died.
        subprocess.TimeoutExpired: the child ran longer than ``timeout``.
    """
    payload = pickle.dumps(list(sys.path)) + pickle.dumps((fn, args, kwargs, bool(keep_result)))
    child_env = {**os.environ, **{str(k): str(v) for k, v in (env or {}).items()}}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE],
        input=payload,
        capture_output=True,
        timeout=timeout,
        env=child_env,
        check=False,
    )
    try:
        status, value, peak = pickle.loads(done.stdout)
    except Exception:  # no reply, or a truncated one: the child died
        status, value, peak = None, None, None
    if status == "ok":
        return value, float(peak)
    if status == "error":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in the measuring process:\n{value}")
    stderr = done.stderr.decode(errors="replace")[-2000:]
    raise RuntimeError(f"the measuring process exited with code {done.returncode} without a result:\n{stderr}")
