"""The yardstick every image model must clear: independent per-pixel categoricals.

For each image set, the test bits/dim of a categorical distribution per pixel fitted (with
add-one smoothing) to the training images, and to the first 5,000 training images; the same
number ``iresnet evaluate`` prints as ``categorical_bpd``. Seconds of CPU, no training.

Run: ``.venv/bin/python benchmarks/categorical.py``.
"""

from __future__ import annotations

from iresnet.app.tasks.base import categorical_bits_per_dim
from iresnet.datasets import load_dataset

from bench.env import environment, script_parser
from bench.report import markdown_table, pm, write_results

NAME = "categorical"
DATASETS = ("digits", "fashion-mnist")


def main() -> None:
    args = script_parser(__doc__).parse_args()
    env = environment()
    rows, raw = [], {}
    for name in DATASETS:
        data = load_dataset(name)
        assert data.n_levels is not None
        full = categorical_bits_per_dim(data.train_x, data.test_x, data.n_levels)
        subset = categorical_bits_per_dim(data.train_x[:5000], data.test_x, data.n_levels)
        raw[name] = {"full": full, "first_5000": subset, "n_train": int(data.train_x.shape[0])}
        rows.append([name, data.train_x.shape[0], pm(*full, 4), pm(*subset, 4)])
    table = markdown_table(
        ["data", "training images", "test bits/dim (all)", "test bits/dim (first 5,000)"], rows
    )
    write_results(
        NAME,
        "Per-pixel categorical models: the floor of every image model",
        env,
        {},
        [("Test bits/dim ± standard error over test images", table)],
        raw,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
