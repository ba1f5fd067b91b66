"""Shared by every benchmark: one place for timing, device facts and the results CSV.

Rows are appended to ``<results dir>/<name>.csv`` with the device name, torch and hopscotch versions, git commit and
a timestamp, so results from different machines and commits can sit in one file and be compared. The installed
package never looks for files next to itself: the results directory is ``$HOPSCOTCH_RESULTS_DIR``, else
``benchmarks/results`` under the current directory when it exists (running from a source checkout, as the
scripts in benchmarks/ do), else ``./hopscotch-results``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


def results_dir() -> Path:
    """``$HOPSCOTCH_RESULTS_DIR``, else ``./benchmarks/results`` when ``./benchmarks`` exists, else
    ``./hopscotch-results`` (read when called, so a script may set the variable first)."""
    env = os.environ.get("HOPSCOTCH_RESULTS_DIR")
    if env:
        return Path(env)
    checkout = Path.cwd() / "benchmarks"
    return checkout / "results" if checkout.is_dir() else Path.cwd() / "hopscotch-results"


def __getattr__(name: str):
    if name == "RESULTS_DIR":  # kept for scripts that import it; computed when asked, like results_dir()
        return results_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def git_commit() -> str:
    """The commit of the git work tree the current directory is in ("unknown" outside one)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def metadata(device: str | torch.device) -> dict:
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "hopscotch": _hopscotch_version(),
        "commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.device(device).type == "cuda":
        meta["driver"] = _nvidia_driver()
    return meta


def _hopscotch_version() -> str:
    from .._version import __version__

    return __version__


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def results_path(csv_path: str | os.PathLike) -> Path:
    """Where ``append_results`` writes ``csv_path``: a bare file name goes to ``results_dir()``."""
    path = Path(csv_path)
    return results_dir() / path if not path.is_absolute() and path.parent == Path(".") else path


def append_results(csv_path: str | os.PathLike, rows: Iterable[dict], device: str | torch.device = "cpu") -> Path:
    """Append ``rows`` (dicts) to a CSV, each with the metadata columns; new columns extend the header."""
    path = results_path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(device)
    rows = [{**r, **meta} for r in rows]
    existing: list[dict] = []
    fields: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            existing = list(reader)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(existing)
        writer.writerows(rows)
    return path


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: str | torch.device = "cpu", *, warmup: int = 3,
            min_reps: int = 5, max_reps: int = 200, budget_s: float = 1.0, keep_samples: bool = False) -> dict:
    """Median and 20/80% quantiles of ``fn`` in milliseconds (CUDA: events; CPU: perf_counter); with
    ``keep_samples`` also every repetition's time (``samples``), for pooling measurements taken in rounds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    cuda = torch.device(device).type == "cuda"
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start_all < budget_s):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    out = summarize_ms(times)
    if keep_samples:
        out["samples"] = times
    return out


def summarize_ms(times: list[float]) -> dict:
    """Median, 20/80% quantiles and count of repetition times in milliseconds."""
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"ms_median": statistics.median(times), "ms_q20": q[0], "ms_q80": q[3], "reps": len(times)}


def copy_bandwidth_gbs(device: str | torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second), in GB/s."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, min_reps=10, budget_s=1.0)
    return 2 * n * 4 / (t["ms_median"] * 1e-3) / 1e9
