"""``python -m iresnet`` (also what ``torchrun -m iresnet`` runs)."""

import sys

from .app.cli import main

sys.exit(main())
