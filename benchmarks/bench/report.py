"""Results as a reader sees them: compact numbers, Markdown tables, and per benchmark
``NAME.md`` (the command, the environment, the settings and the tables) beside ``NAME.json``
(the same and every raw number)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from iresnet.app.files import atomic_write

from . import RESULTS_DIR
from .env import loadavg


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number formatting for tables."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == 0:
            return "0"
        if abs(x) >= 1e5 or abs(x) < 1e-3:
            return f"{x:.{digits - 1}e}"
        short = f"{x:.{digits}g}"
        # 99.7 to 2 digits is "1e+02" in the g format: whole numbers from there up
        return f"{x:.0f}" if abs(x) >= 10**digits or "e" in short else short
    return str(x)


def known(x: Any) -> float | None:
    """A finite number of a result, else None (None, NaN, or the ``"nan"`` a results file
    holds)."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def untimed_note(label: str, why: str, fix: str = "give a larger --budget") -> str:
    """The line under a table that says why ``label``'s per-step cost cells are "-" (they
    read "nan ms" where no step was timed) and what to do."""
    return f"{label}: {why}, so its CPU time per step is not known; {fix}"


def pm(value: float, err: float, digits: int = 3) -> str:
    """``value ± err``."""
    return f"{fmt(value, digits)} ± {fmt(err, 2)}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows
    ]
    return "\n".join([head, sep, *body])


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors as lists, NaN/Inf as strings and anything else unknown as its repr."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def doc_body(doc: str | None) -> str:
    """A script's docstring without its title paragraph and its ``Run:`` paragraph: what the
    benchmark measures, for the report."""
    return (doc or "").split("\n\n", 1)[1].split("Run:")[0].strip()


def load_words(env: dict[str, Any]) -> str:
    """What the recorded load averages say of the timings: only a 1-minute load above one per
    core means other processes competed for the CPU (the text said so of every run)."""
    cores = env.get("cpu_count") or 1
    loads = [
        x[0]
        for x in (env.get("load_average_at_start"), env.get("load_average_at_end"))
        if isinstance(x, (list, tuple)) and x
    ]
    if not loads:
        return "not recorded"
    if max(loads) > cores:
        return (
            "above 1 per core, so other processes competed for the CPU and absolute times are "
            "inflated (ratios measured interleaved are more robust)"
        )
    return "at most 1 per core at start and end (a quiet machine then; loads between not seen)"


def write_results(
    name: str,
    title: str,
    env: dict[str, Any],
    settings: dict[str, Any],
    sections: Sequence[tuple[str, str]],
    raw: dict[str, Any],
    summary: dict[str, Any] | None = None,
    out_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``NAME.md`` (sections of Markdown, each ``(heading, body)``) and ``NAME.json``.

    The load average at the end is measured now, unless ``env`` already holds one (a report
    re-rendered from recorded numbers keeps the recorded value).
    """
    out_dir = out_dir or RESULTS_DIR
    env = {**env, "load_average_at_end": env.get("load_average_at_end") or loadavg()}
    md = [
        f"# {title}",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- torch {env['torch']}, iresnet {env['iresnet']}, Python {env['python']}",
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical cores), "
        f"torch threads: {env['torch_threads']}",
        f"- git commit: {env.get('git_commit')} (working tree may differ)",
        f"- load average (1/5/15 min) at start {env.get('load_average_at_start')}, at end "
        f"{env.get('load_average_at_end')} on {env['cpu_count']} cores: {load_words(env)}",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
    ]
    for heading, body in sections:
        md += [f"## {heading}", "", body.rstrip(), ""]
    md += ["Raw numbers: see the JSON file of the same name.", ""]
    payload = {
        "benchmark": name,
        "title": title,
        "environment": env,
        "settings": settings,
        "summary": summary or {},
        "raw": raw,
    }
    md_path = atomic_write(out_dir / f"{name}.md", "\n".join(md))
    json_path = atomic_write(
        out_dir / f"{name}.json", json.dumps(jsonable(payload), indent=1) + "\n"
    )
    print(f"wrote {md_path} and {json_path}", flush=True)
    return md_path, json_path


def rerender(json_path: Path, write: Callable[..., Any]) -> None:
    """Rewrite a recorded run's report without measuring: ``write(name, env, settings, raw,
    total_seconds, out_dir)`` with the values of its JSON (the command, date and load averages
    are the recorded ones), into the JSON's folder."""
    p = json.loads(Path(json_path).read_text())
    total = p["summary"]["total_seconds"]
    write(p["benchmark"], p["environment"], p["settings"], p["raw"], total, json_path.parent)
