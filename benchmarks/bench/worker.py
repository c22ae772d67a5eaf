"""Measurements in fresh processes: ``python SCRIPT --worker JSON`` runs one configuration.

A worker prints one JSON line last (:func:`run_worker` reads it back), or writes its result
files itself when several run side by side (:func:`run_side_by_side`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import REPO_ROOT


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


def _command(script: str | Path, config: dict[str, Any]) -> list[str]:
    return [sys.executable, str(script), "--worker", json.dumps(config)]


class WorkerFailed(RuntimeError):
    """A worker process that ended without a result; :attr:`reason` says why in one line."""

    def __init__(self, cmd: list[str], reason: str, stderr: str = "") -> None:
        super().__init__(f"worker failed ({reason}): {' '.join(cmd)}\n{stderr[-4000:]}")
        self.reason = reason


def _failure(returncode: int, stderr: str) -> str:
    """One line for a worker's end: its exit status (or signal) and its last line of stderr
    (the exception it ended with), if any."""
    status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return f"{status}: {last}" if last else status


def run_worker(
    script: str | Path, config: dict[str, Any], timeout: float = 600, fixed_malloc: bool = False
) -> dict[str, Any]:
    """Run ``python script --worker JSON`` in a fresh process and return its last JSON line.

    Raises:
        WorkerFailed: the worker exited with an error, was killed, printed nothing or ran past
            ``timeout`` seconds.

    ``fixed_malloc``: see :func:`worker_env` (for workers that measure peak memory)."""
    cmd = _command(script, config)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=worker_env(fixed_malloc),
            timeout=timeout,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise WorkerFailed(cmd, f"no result within {timeout:g} s", err or "") from None
    if proc.returncode != 0:
        raise WorkerFailed(cmd, _failure(proc.returncode, proc.stderr), proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise WorkerFailed(cmd, "it printed no result", proc.stderr)
    return json.loads(lines[-1])


def add_worker_flag(ap: argparse.ArgumentParser) -> None:
    """The hidden ``--worker JSON`` flag of a script that measures in fresh processes."""
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)


def serve(args: argparse.Namespace, work: Callable[[dict[str, Any]], Any]) -> bool:
    """Run ``work(config)`` if this process is a worker (``--worker JSON``), print its result
    as the last JSON line when it returns one, and say whether it ran."""
    if args.worker is None:
        return False
    result = work(json.loads(args.worker))
    if result is not None:
        print(json.dumps(result), flush=True)
    return True


def run_side_by_side(script: str | Path, configs: dict[str, tuple[dict[str, Any], Path]]) -> None:
    """Run one worker per ``name -> (config, folder)`` at the same time and wait for all.

    Each worker's output goes to ``folder/log.txt``. When one fails, the others are killed (no
    orphan keeps training) and ``RuntimeError`` carries the end of the failed one's log.
    """
    with contextlib.ExitStack() as logs:
        procs = {}
        for name, (config, folder) in configs.items():
            folder.mkdir(parents=True, exist_ok=True)
            log = logs.enter_context(open(folder / "log.txt", "w"))
            proc = subprocess.Popen(
                _command(script, config),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_env(),
                cwd=REPO_ROOT,
            )
            procs[name] = (proc, folder)
        for name, (proc, folder) in procs.items():
            rc = proc.wait()
            if rc != 0:
                for other, _ in procs.values():
                    other.kill()
                    other.wait()
                tail = (folder / "log.txt").read_text()[-3000:]
                raise RuntimeError(f"{name} failed with exit code {rc}:\n{tail}")
