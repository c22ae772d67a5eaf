"""The C allocator: glibc's defaults against freed memory kept (``iresnet.app.allocator``).

Each measurement runs in a fresh process, once with ``IRESNET_ALLOCATOR=system`` (glibc's
defaults: a block above the dynamic mmap threshold gets its own mapping, returned to the kernel
when freed, and the heap's free top is trimmed) and once with freed memory kept (the ``iresnet``
command's default since this benchmark: ``mallopt`` fixes the mmap threshold at 32 MiB and the
trim threshold at 128 MiB), the two settings alternating, repetition by repetition. Reported per
workload: the median wall time, CPU time (user + system), system time, minor page faults and
peak resident set, and the ratio kept/system of the CPU time, repetition by repetition.

Workloads:

- ``conv step``, ``toy step``: one training step of ``benchmarks/step_vs_normflows.py``'s
  convolutional (4 blocks on 4x14x14, width 64, batch 32) and 2-D (16 blocks of width 128, batch
  256) residual flows, ours and normflows' (E[N] = 3, memory-efficient Neumann gradient), one
  thread, the two libraries in the same process and under the same allocator setting (so the
  ours/theirs ratio under each setting is like with like); per-step figures over the timed steps;
- ``train fashion-mnist``: ``iresnet train fashion-mnist --steps S`` (the preset as shipped, two
  threads), CPU seconds per optimiser step from the metrics rows (first logged row to the last,
  so start-up, data loading and the final evaluation are not in it);
- ``evaluate fashion-mnist``: ``iresnet evaluate RUN --n-test N --json`` of that run, the whole
  command (the unbiased roulette of the evaluation, larger batches than training).

Run: ``.venv/bin/python benchmarks/allocator.py`` (about 9 minutes on 2 cores; ``--quick`` for
a smoke run of about 3 minutes).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import REPO_ROOT
from bench.env import environment, positive_int, run_script, script_parser, set_threads
from bench.report import doc_body, markdown_table, write_results
from bench.worker import add_worker_flag, serve, worker_env

NAME = "allocator"
SETTINGS = ("system", "retain")
STEP_KINDS = {"conv step": ("conv-rr2", "conv-rr1"), "toy step": ("rr2", "rr1")}


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": r.ru_utime, "sys": r.ru_stime, "minflt": r.ru_minflt}


def step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training step, ours then theirs, timed alternately in this process."""
    from iresnet.app.allocator import retain_freed_memory

    line = retain_freed_memory()  # IRESNET_ALLOCATOR=system in the environment: a no-op
    set_threads(1)
    import step_vs_normflows as svn

    ours_kind, theirs_kind = STEP_KINDS[spec["workload"]]
    sides = {}
    for side, kind in (("ours", ours_kind), ("theirs", theirs_kind)):
        step, _ = svn.make_step(side, kind)
        x = svn.data(svn.batch_of(kind, 256), 0, kind)
        for _ in range(spec["warmup"]):
            step(x)
        sides[side] = (step, x)
    out: dict[str, Any] = {"allocator": line}
    for side in sides:
        out[side] = {"seconds": [], "user": 0.0, "sys": 0.0, "minflt": 0.0}
    for _ in range(spec["steps"]):
        for side, (step, x) in sides.items():
            u0, t0 = _usage(), time.perf_counter()
            step(x)
            t1, u1 = time.perf_counter(), _usage()
            rec = out[side]
            rec["seconds"].append(t1 - t0)
            for key in ("user", "sys", "minflt"):
                rec[key] += (u1[key] - u0[key]) / spec["steps"]
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _child(cmd: list[str], setting: str, cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` under the allocator ``setting``; its wall time and resource use."""
    env = worker_env()
    env.pop("IRESNET_ALLOCATOR", None)
    if setting == "system":
        env["IRESNET_ALLOCATOR"] = "system"
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "minflt": usage.ru_minflt,
        "maxrss_mib": usage.ru_maxrss / 1024,
        "stdout": out,
    }


def _cpu_per_step(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "cpu_seconds" in r]
    first, last = train[0], train[-1]
    return (last["cpu_seconds"] - first["cpu_seconds"]) / (last["step"] - first["step"])


def measure(args: Any, work: Path) -> dict[str, Any]:
    cli = [sys.executable, "-m", "iresnet"]
    steps = 3 if args.quick else 60
    n_test = 64 if args.quick else 1000
    raw: dict[str, Any] = {k: {s: [] for s in SETTINGS} for k in [*STEP_KINDS, "train", "eval"]}
    for rep in range(args.reps):
        order = SETTINGS if rep % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            for workload in STEP_KINDS:
                spec = {"workload": workload, "steps": 3 if args.quick else 20, "warmup": 3}
                cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
                res = _child(cmd, setting, REPO_ROOT)
                res["result"] = json.loads(res.pop("stdout").strip().splitlines()[-1])
                raw[workload][setting].append(res)
            run_dir = work / f"train-{setting}-{rep}"
            res = _child(
                [
                    *cli,
                    "train",
                    "fashion-mnist",
                    "--steps",
                    str(steps),
                    "--out",
                    str(run_dir),
                    "--no-progress",
                    f"train.log_every={1 if args.quick else 10}",
                    f"train.eval_every={10 * steps}",
                    f"train.seed={args.seed}",
                ],
                setting,
                work,
            )
            res.pop("stdout")
            res["cpu_per_step"] = _cpu_per_step(run_dir)
            raw["train"][setting].append(res)
            res = _child(
                [*cli, "evaluate", str(run_dir), "--n-test", str(n_test), "--json"],
                setting,
                work,
            )
            res["result"] = json.loads(res.pop("stdout"))
            raw["eval"][setting].append(res)
            print(f"repetition {rep + 1}/{args.reps} ({setting}) done", flush=True)
    return raw


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _paired(kept: list[float], system: list[float]) -> str:
    ratios = [k / s for k, s in zip(kept, system, strict=True)]
    return f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def tables(raw: dict[str, Any]) -> list[tuple[str, str]]:
    head = [
        "workload",
        "allocator",
        "wall",
        "CPU (user + system)",
        "system",
        "minor page faults",
        "peak RSS MiB",
        "CPU kept/system (range)",
    ]
    rows: list[list[Any]] = []
    ratio_rows: list[list[Any]] = []
    for workload in STEP_KINDS:
        for side in ("ours", "theirs"):
            cpu: dict[str, list[float]] = {}
            for setting in SETTINGS:
                runs = [r["result"] for r in raw[workload][setting]]
                recs = [r[side] for r in runs]
                cpu[setting] = [(r["user"] + r["sys"]) * 1e3 for r in recs]
                rows.append(
                    [
                        f"{workload}, {side} (ms/step)",
                        setting,
                        f"{_median([_median(r['seconds']) * 1e3 for r in recs]):.1f}",
                        f"{_median(cpu[setting]):.1f}",
                        f"{_median([r['sys'] * 1e3 for r in recs]):.1f}",
                        f"{_median([r['minflt'] for r in recs]):.0f}",
                        f"{_median([r['maxrss_mib'] for r in runs]):.0f}",
                        _paired(cpu["retain"], cpu["system"]) if setting == "retain" else "",
                    ]
                )
        for setting in SETTINGS:
            runs = [r["result"] for r in raw[workload][setting]]
            ratio = [_median(r["ours"]["seconds"]) / _median(r["theirs"]["seconds"]) for r in runs]
            ratio_rows.append([workload, setting, f"{_median(ratio):.2f}"])
    for key, label, unit in (
        ("train", "train fashion-mnist", "CPU s/step"),
        ("eval", "evaluate fashion-mnist", "s, whole command"),
    ):
        cpu = {}
        for setting in SETTINGS:
            runs = raw[key][setting]
            if key == "train":
                cpu[setting] = [r["cpu_per_step"] for r in runs]
                wall = "-"
            else:
                cpu[setting] = [r["user"] + r["sys"] for r in runs]
                wall = f"{_median([r['wall'] for r in runs]):.1f}"
            rows.append(
                [
                    f"{label} ({unit})",
                    setting,
                    wall,
                    f"{_median(cpu[setting]):.3f}",
                    f"{_median([r['sys'] for r in runs]):.1f} (whole command)",
                    f"{_median([r['minflt'] for r in runs]):.0f} (whole command)",
                    f"{_median([r['maxrss_mib'] for r in runs]):.0f}",
                    _paired(cpu["retain"], cpu["system"]) if setting == "retain" else "",
                ]
            )
    same = all(
        r["result"]["test_bpd"] == raw["eval"]["system"][i]["result"]["test_bpd"]
        for i, r in enumerate(raw["eval"]["retain"])
    )
    return [
        ("Kept against glibc's defaults", markdown_table(head, rows)),
        (
            "Ours/normflows step time under each setting (same process, same allocator)",
            markdown_table(["workload", "allocator", "ours/theirs (median)"], ratio_rows),
        ),
        (
            "Same numbers",
            "The evaluations' test bits/dim under the two settings are "
            + ("identical, repetition by repetition." if same else "NOT identical."),
        ),
    ]


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--reps",
        type=positive_int,
        default=None,
        help="repetitions of each setting (default 3, about 9 minutes on 2 cores; --quick: 1, "
        "about 3 minutes)",
    )
    add_worker_flag(ap)
    args = ap.parse_args()
    if serve(args, step_worker):
        return
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    set_threads(args.threads)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="iresnet-allocator-") as tmp:
        raw = measure(args, Path(tmp))
    settings = {
        "quick": args.quick,
        "reps": args.reps,
        "seed": args.seed,
        "torch": torch.__version__,
    }
    md, _ = write_results(
        NAME,
        "The C allocator: glibc's defaults against freed memory kept",
        env,
        settings,
        [("What is measured", doc_body(__doc__)), *tables(raw)],
        raw,
        out_dir=args.out_dir,
    )
    print(md.read_text())


if __name__ == "__main__":
    run_script(main)
