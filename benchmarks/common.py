"""Shared helpers of the benchmark scripts: environment record, timing with medians, peak
memory of one step in a fresh subprocess, and result writing (Markdown + JSON).

Every script writes ``benchmarks/results/NAME.md`` and ``benchmarks/results/NAME.json``, both
holding the exact command, the date, the torch version, the CPU thread count and the raw numbers.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    """The command that ran this script, as it could be typed again from the repo root."""
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, REPO_ROOT) if exe.startswith(str(REPO_ROOT)) else exe
    except ValueError:
        pass
    script = sys.argv[0]
    try:
        script = os.path.relpath(os.path.abspath(script), REPO_ROOT)
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in [exe, script, *sys.argv[1:]])


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce or discount the numbers."""
    import iresnet

    return {
        "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "iresnet": getattr(iresnet, "__version__", "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "load_average_at_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine makes timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if len(xs) else math.nan


def iqr(xs: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles (inclusive method)."""
    if len(xs) < 2:
        v = float(xs[0]) if xs else math.nan
        return v, v
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def summarize(xs: Sequence[float]) -> dict[str, Any]:
    lo, hi = iqr(xs)
    return {
        "median": median(xs),
        "mean": float(statistics.fmean(xs)) if xs else math.nan,
        "q25": lo,
        "q75": hi,
        "n": len(xs),
        "raw": [float(x) for x in xs],
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time several functions alternately (the order rotates every round), so slow drifts of
    the machine (other load, frequency) hit all of them alike. Seconds per call, per name."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved series (same length)."""
    return [a / b for a, b in zip(num, den, strict=True)]


# --------------------------------------------------------------------------------------------
# Peak memory (CPU): one step in a fresh process
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_rss(step: Callable[[], Any]) -> dict[str, Any]:
    """Run ``step`` once and report how far the resident set rose above its level right before.

    Meant for a fresh subprocess (see :func:`run_worker`): the kernel's peak mark is reset just
    before the step where Linux allows it (``/proc/self/clear_refs``), otherwise the increase of
    ``ru_maxrss`` is used (which under-reports a step that stays below an earlier peak).
    """
    gc.collect()
    reset = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_after = _proc_status_kib("VmHWM")
    if reset and hwm_after is not None and rss_before is not None:
        peak_kib, method = hwm_after - rss_before, "VmHWM after reset - VmRSS before"
    else:
        peak_kib, method = maxrss_after - maxrss_before, "ru_maxrss after - before"
    return {
        "peak_increase_mib": peak_kib / 1024,
        "method": method,
        "rss_before_mib": (rss_before or 0) / 1024,
        "ru_maxrss_increase_mib": (maxrss_after - maxrss_before) / 1024,
        "step_seconds": seconds,
    }


def worker_env(fixed_malloc: bool = False) -> dict[str, str]:
    """Environment of a measuring subprocess (``src`` on the path).

    ``fixed_malloc`` (memory measurements only): a fixed glibc mmap threshold, so every
    allocation above 64 KiB gets its own mapping and is returned to the OS when freed, and the
    resident set follows the live tensors (glibc's dynamic threshold would otherwise keep freed
    blocks in the heap and hide or inflate the peak). Never for timings: a fresh mapping per
    tensor costs page faults on every allocation, which made an image-flow training step 3-4x
    slower in CPU time.
    """
    env = dict(os.environ)
    if fixed_malloc:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(script: str | Path, config: dict[str, Any], timeout: float = 600,
               fixed_malloc: bool = False) -> dict[str, Any]:
    """Run ``python script --worker JSON`` in a fresh process; it must print one JSON line last.

    ``fixed_malloc``: see :func:`worker_env` (for workers that measure peak memory)."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(fixed_malloc),
                          timeout=timeout, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])


def worker_print(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number formatting for tables."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == 0:
            return "0"
        if abs(x) >= 1e5 or abs(x) < 1e-3:
            return f"{x:.{digits - 1}e}"
        if abs(x) >= 10**digits:
            return f"{x:.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def pm(value: float, err: float, digits: int = 3) -> str:
    """``value ± err``."""
    return f"{fmt(value, digits)} ± {fmt(err, 2)}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows
    ]
    return "\n".join([head, sep, *body])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def write_results(
    name: str,
    title: str,
    env: dict[str, Any],
    settings: dict[str, Any],
    sections: Sequence[tuple[str, str]],
    raw: dict[str, Any],
    summary: dict[str, Any] | None = None,
    out_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``NAME.md`` (sections of Markdown, each ``(heading, body)``) and ``NAME.json``."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**env, "load_average_at_end": _loadavg()}
    md = [f"# {title}", ""]
    md += [
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- torch {env['torch']}, iresnet {env['iresnet']}, Python {env['python']}",
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical cores), "
        f"torch threads: {env['torch_threads']}",
        f"- git commit: {env.get('git_commit')} (working tree may differ)",
        f"- load average (1/5/15 min) at start {env.get('load_average_at_start')}, at end "
        f"{env.get('load_average_at_end')} on {env['cpu_count']} cores: above ~1 per core, other "
        "processes competed for the CPU and absolute times are inflated (ratios measured "
        "interleaved are more robust)",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
    ]
    for heading, body in sections:
        md += [f"## {heading}", "", body.rstrip(), ""]
    md += ["Raw numbers: see the JSON file of the same name.", ""]
    md_path = out_dir / f"{name}.md"
    json_path = out_dir / f"{name}.json"
    md_path.write_text("\n".join(md))
    payload = {
        "benchmark": name,
        "title": title,
        "environment": env,
        "settings": settings,
        "summary": summary or {},
        "raw": raw,
    }
    json_path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return md_path, json_path


def set_threads(n: int | None) -> int:
    """Fix torch's intra-op threads (default 1) and return the number in force.

    One thread is the reference setting of these benchmarks: the tensors are small, so extra
    threads buy little, and on a shared 2-core machine an OpenMP team whose second thread is
    descheduled by another process stalls every parallel region (we measured 10-40x slowdowns).
    """
    torch.set_num_threads(n or 1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only allowed once, before any parallel work)
        pass
    return torch.get_num_threads()


def add_common_args(ap) -> None:
    ap.add_argument("--quick", action="store_true", help="fast smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="default: benchmarks/results")


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def logged_max(run_dir: Path, key: str) -> float:
    """The largest value of ``key`` in a run's ``metrics.jsonl`` (``seconds``, ``cpu_seconds``)."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x]
    return max((r[key] for r in rows if key in r), default=float("nan"))


def fit_steps(cfg: Any, budget: float, work_dir: Path, timing_steps: int = 15) -> tuple[int, float]:
    """Steps of ``cfg``'s training that fit in 95% of ``budget`` CPU seconds, and the measured
    CPU seconds per step, from a short timing run of the same config (not counted in the budget).

    Used so that a cosine schedule ends when the budget does instead of being cut mid-decay.
    """
    from iresnet.train.loop import train

    probe = cfg.override([f"train.steps={timing_steps}", "train.eval_every=1000000",
                          "train.checkpoint_every=1000000", "train.max_seconds=0",
                          "train.max_cpu_seconds=0"])
    train(probe, Path(work_dir) / "timing", progress=False)
    per_step = logged_max(Path(work_dir) / "timing", "cpu_seconds") / timing_steps
    return max(int(0.95 * budget / per_step), cfg.train.warmup_steps + 1), per_step

