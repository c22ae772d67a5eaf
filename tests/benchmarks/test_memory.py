"""``benchmarks/memory.py``: a failed measurement is "-" with its reason, ``null`` in JSON."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import memory  # noqa: E402
from bench.report import jsonable  # noqa: E402
from bench.worker import WorkerFailed, run_worker  # noqa: E402

KILLED = "killed by signal 9"


def _fake_worker(fail: set[tuple[str, int]]):
    def run(script, cfg, fixed_malloc=False):
        if (cfg["mode"], cfg["n_terms"]) in fail:
            raise WorkerFailed(["python", "memory.py"], KILLED)
        peak = 10.0 * cfg["n_terms"] if cfg["mode"] == "plain" else 10.0
        return {
            **cfg,
            "peak_increase_mib": peak,
            "ru_maxrss_increase_mib": peak,
            "step_seconds": 0.1,
        }

    return run


def _run(monkeypatch, fail: set[tuple[str, int]]) -> dict:
    monkeypatch.setattr(memory, "run_worker", _fake_worker(fail))
    return memory.run(Namespace(quick=True, batch=4, seed=0, threads=1))


def test_a_failed_measurement_is_a_dash_with_its_reason_and_null_in_json(monkeypatch):
    """A worker killed (out of memory) ended the whole run in a traceback; a mode without a
    measurement at one end showed "nan" for its ratio. The others are measured, the failed
    cells are "-" with a line that says which failed and why, and the JSON holds null."""
    data = _run(monkeypatch, {("plain", 5)})
    assert [r.get("failed") for r in data["runs"]] == [None, KILLED, None, None]
    body, summary = memory.tables(data)
    assert "nan" not in body
    plain = next(
        line for line in body.splitlines() if line.startswith("| " + memory.MODE_LABEL["plain"])
    )
    assert plain.split(" | ")[1:] == ["20.0", "-", "- |"]
    assert (
        f"- {memory.MODE_LABEL['plain']}, n=5: the measurement failed ({KILLED}), so its "
        'cells are "-"; run the script again (a smaller --batch uses less memory)'
    ) in body
    assert "not known, a measurement failed (see above)." in body
    assert summary["plain"]["ratio_last_over_first"] is None
    assert summary["memeff"]["ratio_last_over_first"] == 1.0
    assert summary["target_met"] is None
    text = json.dumps(jsonable(summary))
    assert '"ratio_last_over_first": null' in text and "nan" not in text


def test_a_run_without_failures_reads_as_before(monkeypatch):
    body, summary = memory.tables(_run(monkeypatch, set()))
    assert summary["plain"]["ratio_last_over_first"] == 2.5 and summary["target_met"] is True
    assert "failed" not in body and "-> met." in body


def test_a_worker_that_fails_says_why_in_one_line(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("raise MemoryError('no room for the batch')\n")
    try:
        run_worker(script, {})
    except WorkerFailed as e:
        assert e.reason == "exit status 1: MemoryError: no room for the batch"
        assert isinstance(e, RuntimeError)  # callers that caught RuntimeError still do
    else:
        raise AssertionError("no failure")


def test_a_repetition_that_failed_leaves_the_median_of_the_others(monkeypatch):
    fake, calls = _fake_worker(set()), []

    def first_fails(script, cfg, fixed_malloc=False):
        calls.append(cfg)
        if len(calls) == 1:  # plain, n=2, the first of three repetitions
            raise WorkerFailed(["python", "memory.py"], KILLED)
        return fake(script, cfg, fixed_malloc)

    monkeypatch.setattr(memory, "run_worker", first_fails)
    data = memory.run(Namespace(quick=False, batch=4, seed=0, threads=1))
    body, summary = memory.tables(data)
    assert summary["plain"]["peak_mib"][2] == 20.0 and summary["target_met"] is True
    assert (
        f"{memory.MODE_LABEL['plain']}, n=2: 1 of 3 measurements failed ({KILLED}), so the "
        "median is of the other 2 repetitions;"
    ) in body
