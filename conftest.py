"""Settings shared by the tests in ``tests/`` and the doctests of ``src/``.

One torch thread per test process: ``make test`` runs two workers on two cores, and the tiny
models of the suite lose more to thread hand-offs than they gain (small convolutions run 50-100x
slower with two threads on a busy machine).
"""

import torch

torch.set_num_threads(1)
