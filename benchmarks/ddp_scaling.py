"""Scaling of data-parallel training on this machine: 2 processes (torchrun, gloo) against 1,
at the same global batch, through the real CLI.

Efficiency = (steps/s with 2 processes) / (2 x steps/s with 1 process) would be 1 for perfect
scaling; here both processes share one 2-core machine, so each gets one core (threads=1).

    .venv/bin/python benchmarks/ddp_scaling.py [--steps 200] [--preset toy-8gaussians]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iresnet.app.cli import OneLineParser
from iresnet.app.words import count

from bench.env import environment
from bench.metrics import records, train_rows
from bench.report import markdown_table, write_results


def run(preset: str, steps: int, nproc: int, batch: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "iresnet",
        "train",
        preset,
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--no-progress",
        f"train.batch_size={batch}",
        "train.threads=1",
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
    ]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    rows = train_rows(records(out))
    if len(rows) < 2 or rows[-1]["step"] == rows[0]["step"]:  # 0 / 0 steps per second
        print(
            f"{Path(sys.argv[0]).name}: error: the {nproc}-process run logged "
            f"{count(len(rows), 'training row')} in {count(steps, 'step')} (one every "
            "train.log_every steps), too few to time; give more --steps",
            file=sys.stderr,
        )
        raise SystemExit(2)  # as a usage error
    # Training time only (from the loop's own clock), excluding start-up, evaluation and plots.
    first, last = rows[0], rows[-1]
    sps = (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])
    return {
        "nproc": nproc,
        "steps_per_second": sps,
        "wall_seconds": wall,
        "final_nll": last.get("nll"),
    }


def main() -> None:
    # OneLineParser, not script_parser: the shared flags (--quick, --threads, --seed, --out-dir)
    # would do nothing here (each process trains with train.threads=1).
    ap = OneLineParser(description=__doc__)
    ap.add_argument("--preset", default="toy-8gaussians")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:  # nothing to time: a traceback after the runs
            ap.error(f"{flag} must be >= 1, got {value}")
    env = environment()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for nproc in (1, 2):
                out = Path(tmp) / f"r{r}-{nproc}"
                results.append(run(args.preset, args.steps, nproc, args.batch, out))
    # The upper median (of 2 repeats: the faster run).
    med1, med2 = (
        sorted(x["steps_per_second"] for x in results if x["nproc"] == n)[args.repeats // 2]
        for n in (1, 2)
    )
    efficiency = med2 / (2 * med1)
    table = markdown_table(
        ["processes", "steps/s (median)", "speed-up", "efficiency"],
        [
            [1, f"{med1:.2f}", "1.00", "1.00"],
            [2, f"{med2:.2f}", f"{med2 / med1:.2f}", f"{efficiency:.2f}"],
        ],
    )
    write_results(
        "ddp_scaling",
        "Data-parallel scaling: 2 processes vs 1 (CPU, gloo)",
        env,
        vars(args),
        [("Result", table)],
        {"runs": results},
        {"efficiency": efficiency, "speedup": med2 / med1},
    )
    print(table)


if __name__ == "__main__":
    main()
