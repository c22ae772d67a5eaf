"""``train``: a config into a run folder, with the pictures of the finished run."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import IResNetError
from .config import Config
from .figures import figure_names, run_figures
from .runs import Run, load_run
from .trainer import Trainer, TrainResult

__all__ = ["missing_figures", "redraw_figures", "train"]


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


def missing_figures(run_dir: str | Path) -> list[str]:
    """The pictures a finished run lacks: its process was killed while it drew them (or it
    could not draw them). Reads the run's config, ``data.json`` and weights, not its data."""
    run = Run(run_dir)
    task = load_run(run.path, data=False).task
    return [name for name in figure_names(task) if not (run.path / name).is_file()]


def redraw_figures(run_dir: str | Path, names: list[str]) -> None:
    """Draw the pictures ``names`` of a finished run (see ``missing_figures``) as training
    does, after removing the half-written ``.NAME.png.*.tmp`` files that a kill left.

    Raises:
        ConfigError: another process writes to the run (its PID is named).
        DataError: the data the run was trained on is gone or changed.
    """
    run = Run(run_dir)
    run.acquire()  # one writer: not beside a training process
    try:
        for name in names:
            for stale in run.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        trained = load_run(run.path)
        run_figures(trained.task, trained.model, run.path, run.records(), only=names)
    finally:
        run.release()
