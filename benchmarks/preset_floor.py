"""A trained image run against the floor every image model must clear.

Reads a run folder trained by ``iresnet train`` (a preset at its own budget), scores it as
``iresnet evaluate`` does (``DensityTask.full_evaluation``: the unbiased roulette with 20 exact
terms above 64 dimensions), and puts beside it the independent per-pixel categorical model
fitted (add-one smoothing) to the same training images the run saw (a ``data.train_subset``
included), on the same test images. Issue 13 asks every image preset to clear it with a clear
margin on digits, Fashion-MNIST and a 5,000-image subset of Fashion-MNIST. The budget of the
run is whatever it trained with (read from its config and ``metrics.jsonl``).

Run, for the 5,000-image subset (one core, the preset's 1,140 wall-seconds as CPU seconds)::

    iresnet train fashion-mnist data.train_subset=5000 train.threads=1 train.max_seconds=0 \\
        train.max_cpu_seconds=1140 --out RUN
    .venv/bin/python benchmarks/preset_floor.py RUN --n-test 2000 --name preset-floor-fm5000
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from iresnet.app.runs import load_run

from bench.env import environment, script_parser, set_threads
from bench.report import markdown_table, pm, write_results


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("run_dir", type=Path, help="a finished image run folder")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images (default all)")
    ap.add_argument("--name", default="preset-floor", help="results name")
    args = ap.parse_args()
    set_threads(1)
    env = environment()
    trained = load_run(args.run_dir)
    if not trained.task.images:
        raise SystemExit(f"{args.run_dir}: not an image run")
    torch.manual_seed(0)
    ev = trained.task.full_evaluation(trained.model, n_inverse=64, n_test=args.n_test)
    records = [
        json.loads(line)
        for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    cpu = max((r.get("cpu_seconds", 0.0) for r in records), default=0.0)
    d = trained.cfg.data
    margin = ev["test_bpd"] - ev["categorical_bpd"]
    se = math.hypot(ev["test_bpd_se"], ev["categorical_bpd_se"])
    rows = [
        [
            d.name,
            f"{trained.data.train_x.shape[0]:,}" + (" (subset)" if d.train_subset else ""),
            trained.step,
            f"{cpu:.0f}",
            ev["n_test"],
            pm(ev["test_bpd"], ev["test_bpd_se"], 4),
            pm(ev["categorical_bpd"], ev["categorical_bpd_se"], 4),
            f"{margin:+.4f} ± {se:.4f}",
        ]
    ]
    head = [
        "data",
        "training images",
        "steps",
        "CPU s trained",
        "test images",
        "run: test bits/dim ± SE",
        "per-pixel categorical ± SE",
        "run - categorical",
    ]
    m = trained.cfg.model
    settings = {
        "run_dir": str(args.run_dir),
        "model": f"{m.kind}, {m.size()}",
        "train_subset": d.train_subset,
        "max_cpu_seconds": trained.cfg.train.max_cpu_seconds,
        "max_seconds": trained.cfg.train.max_seconds,
        "threads": trained.cfg.train.threads,
    }
    md, _ = write_results(
        args.name,
        f"A trained {d.name} run against the per-pixel categorical floor",
        env,
        settings,
        [("Test bits/dim", markdown_table(head, rows))],
        {"evaluation": ev, "cpu_seconds": cpu, "step": trained.step},
        summary={"test_bpd": ev["test_bpd"], "categorical_bpd": ev["categorical_bpd"]},
        out_dir=args.out_dir,
    )
    print(md.read_text(), flush=True)


if __name__ == "__main__":
    main()
