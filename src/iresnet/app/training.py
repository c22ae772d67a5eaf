"""``train``: a config into a run folder, with the pictures of the finished run."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import IResNetError
from .config import Config
from .figures import run_figures
from .runs import Run
from .trainer import Trainer, TrainResult

__all__ = ["train"]


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    figures: bool = True,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (see ``Trainer``), then, for a
    finished run on the main process, draw its pictures into the folder (``figures``)."""
    result = Trainer(cfg, run_dir, resume=resume, progress=progress, stop_after=stop_after).run()
    if figures and result.is_main and result.stopped == "finished":
        assert result.task is not None and result.model is not None
        try:
            run_figures(result.task, result.model, result.run_dir, Run(result.run_dir).records())
        except (ValueError, IResNetError, FloatingPointError) as exc:
            # The run is trained and saved; a picture that cannot be drawn must not undo that.
            print(f"iresnet: note: the run's figures were not drawn ({exc})", file=sys.stderr)
    return result
