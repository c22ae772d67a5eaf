#!/usr/bin/env bash
# A prepared GPU check for a lent accelerator of a few minutes: train the Fashion-MNIST image
# preset on CUDA for a fixed wall-clock time, evaluate it, and write its test bits/dim and the
# training throughput (images per second) to benchmarks/results/gpu-fashion-mnist.{md,json}.
#
# Needs: a Python whose torch has CUDA (PYTHON, default .venv/bin/python) with this package
# installed, and the Fashion-MNIST IDX files (DATA_DIR, default: Debian's location; the machine
# that runs this cannot download anything, so carry them). Usage:
#
#   benchmarks/gpu.sh                        # 240 s of training, the GPU-sized overrides below
#   SECONDS_BUDGET=120 DATA_DIR=shared/fashion-mnist benchmarks/gpu.sh
#   OVERRIDES="model.hidden=32" benchmarks/gpu.sh   # the CPU preset's size, for comparison
#
# The script never runs in CI and nothing else depends on it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
SECONDS_BUDGET=${SECONDS_BUDGET:-240}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
PRESET=${PRESET:-fashion-mnist}
# A GPU-sized middle ground between the CPU preset and the paper: wider, deeper, larger batches.
OVERRIDES=${OVERRIDES:-"model.hidden=128 model.n_blocks=4 train.batch_size=256 train.lr=2e-3"}
RUN=${RUN:-runs/gpu-$PRESET-$(date +%Y%m%d-%H%M%S)}

"$PYTHON" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} sees no CUDA device; install a CUDA build "
             "(README: 'On a GPU') and run on a machine with a GPU")
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, flush=True)
EOF

nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
# A step budget far above what fits: the time budget stops the run (and the cosine schedule is
# scaled to the steps, so we set the steps from a conservative guess of 10 steps/s).
STEPS=$(( SECONDS_BUDGET * 10 ))
# shellcheck disable=SC2086
"$PYTHON" -m iresnet train "$PRESET" --device cuda --out "$RUN" --steps "$STEPS" \
    data.data_dir="$DATA_DIR" train.max_seconds="$SECONDS_BUDGET" train.eval_every=1000 \
    train.checkpoint_every=1000 $OVERRIDES
"$PYTHON" -m iresnet evaluate "$RUN" --json > "$RUN/evaluate.json"

"$PYTHON" - "$RUN" "$SECONDS_BUDGET" "$OVERRIDES" <<'EOF'
import json, sys, torch
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench.env import environment
from bench.metrics import records, train_rows
from bench.report import markdown_table, pm, write_results

run, budget, overrides = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
cfg = json.loads((run / "config.json").read_text())
rows = records(run)
steps_rows = train_rows(rows, "seconds")
ev = json.loads((run / "evaluate.json").read_text())
steps, secs = steps_rows[-1]["step"], steps_rows[-1]["seconds"]
# Throughput after the first logged interval (excludes CUDA warm-up and cuDNN autotuning).
a, b = steps_rows[min(1, len(steps_rows) - 1)], steps_rows[-1]
ips = (b["step"] - a["step"]) * cfg["train"]["batch_size"] / max(b["seconds"] - a["seconds"], 1e-9)
summary = {"test_bpd": ev["test_bpd"], "test_bpd_se": ev["test_bpd_se"],
           "estimator": ev["estimator"], "images_per_second": ips, "steps": steps,
           "train_seconds": secs, "inverse_max_error": ev["inverse_max_error"],
           "invertible": ev["invertible"], "device": torch.cuda.get_device_name(0)}
table = markdown_table(
    ["test bits/dim ± SE", "estimator", "images/s", "steps", "seconds", "inverse max error",
     "invertible"],
    [[pm(ev["test_bpd"], ev["test_bpd_se"], 4), ev["estimator"], f"{ips:,.0f}", steps,
      f"{secs:.0f}", f"{ev['inverse_max_error']:.2e}", ev["invertible"]]])
env = environment()
env["gpu"] = summary["device"]
write_results("gpu-fashion-mnist", "Fashion-MNIST on a GPU for a fixed time", env,
              {"budget_s": budget, "overrides": overrides, "run": str(run)},
              [("Result", table)], {"metrics": rows, "evaluate": ev}, summary)
print(table)
EOF
