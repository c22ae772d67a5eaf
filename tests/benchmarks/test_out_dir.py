"""Every benchmark that takes ``--out-dir`` (``script_parser``'s shared flags) writes there."""

import ast
from pathlib import Path

import pytest

SCRIPTS = [  # the scripts with the shared flags (``script_parser``), --out-dir among them
    p
    for p in sorted((Path(__file__).parents[2] / "benchmarks").glob("*.py"))
    if "script_parser(" in p.read_text(encoding="utf-8")
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
