"""``python -m iresnet`` (also what ``torchrun -m iresnet`` runs)."""

import sys

from .cli import main

sys.exit(main())
