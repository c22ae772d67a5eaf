"""The house: ``import iresnet`` loads the library only, and the import contract catches an
upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_iresnet_loads_neither_the_app_nor_matplotlib():
    code = (
        "import sys, iresnet\n"
        "bad = [m for m in sys.modules if m.startswith(('iresnet.app', 'matplotlib'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_trainer_does_not_load_matplotlib():
    code = (
        "import sys, iresnet.app.trainer\n"
        "print(any(m.startswith('matplotlib') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed")
    env = {"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
    )


def test_import_contract_holds_and_fails_on_an_upward_import(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert _lint_imports(src).returncode == 0
    spectral = src / "iresnet" / "nn" / "spectral.py"
    spectral.write_text(spectral.read_text() + "\nfrom ..app import config  # noqa\n")
    broken = _lint_imports(src)
    assert broken.returncode != 0
    assert "iresnet.nn.spectral -> iresnet.app.config" in broken.stdout
