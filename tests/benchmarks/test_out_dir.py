"""Every benchmark that takes ``--out-dir`` (``script_parser``'s shared flags) writes there,
and every script's usage error is one line."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench.env import script_parser  # noqa: E402

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"

SCRIPTS = [  # the scripts with the shared flags (``script_parser``), --out-dir among them
    p for p in sorted(BENCHMARKS.glob("*.py")) if "script_parser(" in p.read_text(encoding="utf-8")
]

ARGUMENT_SCRIPTS = [  # every script that reads a command line, with whatever parser
    p
    for p in sorted(BENCHMARKS.glob("*.py"))
    if any(
        f"{call}(" in p.read_text(encoding="utf-8") for call in ("parse_args", "parse_or_render")
    )
]


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_that_takes_out_dir_writes_its_results_there(script):
    """``preset_floor.py --out-dir D`` wrote into ``benchmarks/results`` all the same (and so
    did four other scripts): a results file of another tree landed beside the recorded ones."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    assert _calls(tree, "script_parser"), script.name
    writes = _calls(tree, "write_results")
    # out_dir is write_results' eighth parameter, by keyword or by position
    assert all(
        len(call.args) >= 8 or any(k.arg == "out_dir" for k in call.keywords) for call in writes
    ), script.name


def _refusal(capsys: pytest.CaptureFixture[str], out_dir: Path) -> str:
    with pytest.raises(SystemExit) as exc:
        script_parser("a benchmark").parse_args(["--out-dir", str(out_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--out-dir" in err
    return err


def test_an_out_dir_that_cannot_hold_the_results_is_refused_as_it_is_parsed(tmp_path, capsys):
    """``--out-dir`` naming a file failed only when the results were written, after the whole
    run (up to an hour); every script's parser now refuses it first, creating nothing."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert "notes.txt is a file; name a folder" in _refusal(capsys, afile)
    assert "cannot be created" in _refusal(capsys, afile / "sub" / "deeper")
    assert afile.read_text() == "mine"
    assert "empty path" in _refusal(capsys, Path(" "))
    fresh = tmp_path / "new" / "results"  # created when the results are written, not now
    assert script_parser(None).parse_args(["--out-dir", str(fresh)]).out_dir == fresh
    assert not (tmp_path / "new").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "no permission" in _refusal(capsys, locked / "results")
    if Path("/proc/self").is_dir():  # permission bits say root may write in /proc; it cannot
        assert "cannot create /proc/results" in _refusal(capsys, Path("/proc/results"))
    assert set(tmp_path.iterdir()) == {afile, *([locked] if os.geteuid() != 0 else [])}


def test_a_script_refuses_a_file_as_out_dir_before_it_runs(tmp_path):
    afile = tmp_path / "results.md"
    afile.write_text("kept")
    script = Path(__file__).parents[2] / "benchmarks" / "categorical.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out-dir", str(afile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "is a file" in done.stderr
    assert "Traceback" not in done.stderr and afile.read_text() == "kept"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "unrecognized arguments: --nope"),
        (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    ],
)
def test_a_usage_error_is_one_line_that_names_the_help(capsys, argv, message):
    """A script's usage error came under argparse's usage block (six lines for
    sample_quality.py); it is one line, as the ``iresnet`` command's, naming ``--help``."""
    ap = script_parser(None)
    ap.prog = "demo.py"
    with pytest.raises(SystemExit) as stop:
        ap.parse_args(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"demo.py: error: {message} (see `demo.py --help`)\n"


def test_the_one_line_check_below_reaches_the_scripts_without_the_shared_flags():
    """figure1.py and ddp_scaling.py built a plain ArgumentParser; frobenius.py and
    certified_norm.py parse through ``bench.norms``: none of them says ``script_parser(``."""
    names = {p.name for p in ARGUMENT_SCRIPTS}
    assert {"ddp_scaling.py", "figure1.py", "frobenius.py", "certified_norm.py"} <= names
    assert {p.name for p in SCRIPTS} < names


# One process per script, forked from one that imported torch and the application first: a
# fresh ``python SCRIPT`` each spent ~3 s importing them (25 scripts). A script that ignored
# the flag would start its benchmark: the alarm ends it.
_FORKS = r"""
import json, os, runpy, signal, sys, tempfile, traceback
import matplotlib.pyplot, torch
import iresnet.app.cli, iresnet.app.plots, iresnet.app.training
for line in sys.stdin:
    script, argv = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv, sys.path[0] = [script, *argv], os.path.dirname(script)
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        status = os.waitpid(pid, 0)[1]
        out.seek(0)
        err.seek(0)
        found = [os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()]
        print(json.dumps(found), flush=True)
"""


@pytest.fixture(scope="module")
def run_forked(tmp_path_factory):
    """``run_forked(script, argv)``: the exit status, stdout and stderr of the script run with
    ``argv`` in a process of its own, in an empty folder (returned as ``.cwd``)."""
    cwd = tmp_path_factory.mktemp("cwd")
    server = subprocess.Popen(
        [sys.executable, "-c", _FORKS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert server.stdin is not None and server.stdout is not None

    def run(script: Path, argv: list[str]) -> tuple[int, str, str]:
        server.stdin.write(json.dumps([str(script), argv]) + "\n")
        server.stdin.flush()
        code, out, err = json.loads(server.stdout.readline())
        return code, out, err

    run.cwd = cwd  # type: ignore[attr-defined]
    yield run
    server.stdin.close()
    server.wait(timeout=60)


@pytest.mark.parametrize("script", ARGUMENT_SCRIPTS, ids=lambda p: p.name)
def test_every_script_s_usage_error_is_one_line_that_names_the_help(script, run_forked):
    """``figure1.py --nope`` and ``ddp_scaling.py --nope`` printed argparse's usage block (two
    and three lines) above the error: every script's usage error is one line, exit status 2.
    (Scripts with a required flag name that one first.)"""
    code, out, err = run_forked(script, ["--nope"])
    name = script.name
    assert (code, out) == (2, ""), err[-2000:]
    assert err.startswith(f"{name}: error: ") and err.endswith(f" (see `{name} --help`)\n")
    assert err.count("\n") == 1, err
    assert "unrecognized arguments: --nope" in err or "arguments are required" in err, err
    assert not any(run_forked.cwd.iterdir())


def test_a_quick_run_without_out_dir_never_writes_over_the_recorded_results(tmp_path):
    from bench import RESULTS_DIR
    from bench.env import QUICK_DIR

    ap = script_parser("doc")
    assert QUICK_DIR == RESULTS_DIR / "quick"
    assert ap.parse_args(["--quick"]).out_dir == QUICK_DIR
    assert QUICK_DIR.is_dir()
    assert ap.parse_args([]).out_dir is None  # the recorded results' folder, as before
    assert ap.parse_args(["--quick", "--out-dir", str(tmp_path)]).out_dir == tmp_path
    ignored = (BENCHMARKS.parent / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "benchmarks/results/quick/" in ignored


@pytest.mark.parametrize(
    "value,message",
    [
        ("0", "must be at least 1, got 0"),
        ("-3", "must be at least 1, got -3"),
        ("two", "expected a whole number, got 'two'"),
    ],
)
def test_counts_of_steps_and_repetitions_are_refused_below_one(capsys, value, message):
    from bench.env import positive_int

    ap = script_parser("doc")
    ap.add_argument("--reps", type=positive_int, default=None)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--reps", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument --reps: {message}" in err
    assert ap.parse_args(["--reps", "2"]).reps == 2


def test_a_scripts_own_refusal_is_one_error_line_with_status_2(capsys, monkeypatch):
    from bench.env import run_script

    monkeypatch.setattr(sys, "argv", ["demo.py"])

    def refuses() -> None:
        raise SystemExit("/nowhere: no run folder; give one")

    with pytest.raises(SystemExit) as e:
        run_script(refuses)
    assert e.value.code == 2
    assert capsys.readouterr().err == "demo.py: error: /nowhere: no run folder; give one\n"

    def exits_quietly() -> None:
        raise SystemExit(0)

    with pytest.raises(SystemExit) as e:  # a plain status passes through untouched
        run_script(exits_quietly)
    assert e.value.code == 0
    assert capsys.readouterr().err == ""
