"""What a reader needs to reproduce or discount the numbers, and the process set-up every
script shares (threads, seeds, the common flags)."""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iresnet.app.cli import OneLineParser
from iresnet.app.files import out_path
from iresnet.errors import IResNetError

from . import REPO_ROOT, RESULTS_DIR

#: Where a ``--quick`` run without ``--out-dir`` writes (ignored by git): never over the
#: recorded results the README quotes.
QUICK_DIR = RESULTS_DIR / "quick"


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


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine makes timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def command_line() -> str:
    """The command that ran this script, as it could be typed again from the repo root."""
    exe = sys.executable
    if exe.startswith(str(REPO_ROOT)):
        exe = os.path.relpath(exe, REPO_ROOT)
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    return " ".join(shlex.quote(a) for a in [exe, script, *sys.argv[1:]])


def environment() -> dict[str, Any]:
    """The command, date, versions, CPU, threads, commit and load average at the start."""
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
        "load_average_at_start": loadavg(),
    }


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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _ScriptParser(OneLineParser):
    """A benchmark's parser: a ``--quick`` smoke run without ``--out-dir`` writes to
    :data:`QUICK_DIR`, not over the recorded results."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        parsed, rest = super().parse_known_args(args, namespace)
        if getattr(parsed, "quick", False) and getattr(parsed, "out_dir", "") is None:
            try:
                QUICK_DIR.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                self.error(f"cannot create {QUICK_DIR} ({e.strerror}); give --out-dir")
            parsed.out_dir = QUICK_DIR
        return parsed, rest


def positive_int(text: str) -> int:
    """An argument that counts something (steps, repetitions): an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argument that measures something (a budget of CPU seconds): a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text.strip()}")
    return value


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description, and the flags
    every benchmark shares (:func:`add_common_args`); a usage error is one line, as the
    ``iresnet`` command's (``prog: error: ... (see `prog --help`)``), exit status 2. With
    ``--quick`` and no ``--out-dir``, ``args.out_dir`` is :data:`QUICK_DIR`."""
    ap = _ScriptParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(ap)
    return ap


def out_dir(text: str) -> Path:
    """An ``--out-dir`` argument, refused at parse time where the results could not be written
    (they are written last, after a run of up to an hour): an empty path, a file, a folder
    under a file, or a folder this user cannot write in (or create). Nothing is left behind:
    a probe file is written in the nearest existing folder and removed (permission bits alone
    let root "write" in ``/proc``).

    Raises:
        argparse.ArgumentTypeError: the path and what to do, in one line.
    """
    path = out_path(text)  # the CLI's --out: a blank path refused
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; name a folder for the results")
    existing = path.absolute()
    while not existing.exists():  # the folder, or the nearest one above it that exists
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(
            f"{existing} is a file, so {path} cannot be created; name another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "write in" if existing == path.absolute() else f"create {path} in"
        raise argparse.ArgumentTypeError(
            f"cannot {made} {existing} (no permission); name a folder you can write to"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = f"write in {existing}" if existing == path.absolute() else f"create {path}"
        raise argparse.ArgumentTypeError(
            f"cannot {where} ({e.strerror} in {existing}); name a folder you can write to"
        ) from None
    return path


def run_script(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``; the library's own errors (a data folder without the files,
    a damaged run folder: ``IResNetError``) and the script's own refusals
    (``SystemExit("message")``) end it with their message in one line, exit status 2, and
    Ctrl-C with "interrupted", exit status 130, as the ``iresnet`` command line ends, not in a
    traceback."""
    try:
        main()
    except IResNetError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse's 2, a plain exit status: as they are
            raise
        # A script's own refusal, ``raise SystemExit("what to do")``: the same one line and
        # status as a usage error (Python would print the bare message and exit with 1).
        message = e.code.removeprefix(f"{Path(sys.argv[0]).name}: error: ")
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, as the CLI's
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """``--quick``, ``--threads``, ``--seed`` and ``--out-dir`` (checked as it is parsed:
    :func:`out_dir`)."""
    ap.add_argument("--quick", action="store_true", help="fast smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out-dir",
        type=out_dir,
        default=None,
        help="default: benchmarks/results (benchmarks/results/quick with --quick)",
    )
