"""The benchmark scripts' shared pieces, one job per module.

- :mod:`bench.env`: the environment record and the process set-up (threads, seeds, flags);
- :mod:`bench.report`: number formatting, Markdown tables, ``NAME.md`` + ``NAME.json``;
- :mod:`bench.stats`: medians, quartiles, summaries, paired ratios, verdicts;
- :mod:`bench.timing`: wall-clock timing, interleaved between variants;
- :mod:`bench.rss`: peak resident memory of one step;
- :mod:`bench.worker`: measurements in fresh processes (``SCRIPT --worker JSON``);
- :mod:`bench.metrics`: readers of a run's ``metrics.jsonl``;
- :mod:`bench.ours`: our model trained by the real loop under a CPU budget;
- :mod:`bench.density`: exact log-densities of trained toy flows and their scores;
- :mod:`bench.peers`: the peers' (normflows, zuko) builders and their one training loop;
- :mod:`bench.blocks`: residual branches for the micro-benchmarks and their exact norms;
- :mod:`bench.norms`: two Lipschitz normalisations compared (toy likelihood, interleaved steps).

The scripts in ``benchmarks/`` import this package (``python benchmarks/SCRIPT.py`` puts
``benchmarks/`` first on the path).
"""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
