"""The C allocator's settings: applied once, never over the user's own choice."""

import os
import subprocess
import sys

import pytest

from iresnet.app import allocator
from iresnet.app.cli import main
from iresnet.errors import ConfigError

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def clean_env(monkeypatch):
    """No allocator settings of the user's, and nothing applied yet in this process's eyes."""
    for key in list(os.environ):
        if key.startswith("MALLOC_") or key in ("GLIBC_TUNABLES", "LD_PRELOAD", allocator.OPT_OUT):
            monkeypatch.delenv(key)
    monkeypatch.setattr(allocator, "_applied", None)
    return monkeypatch


@pytest.mark.parametrize(
    "key,value,reason",
    [
        ("IRESNET_ALLOCATOR", "system", "IRESNET_ALLOCATOR=system"),
        ("IRESNET_ALLOCATOR", " System ", "IRESNET_ALLOCATOR=system"),
        ("MALLOC_TRIM_THRESHOLD_", "131072", "MALLOC_TRIM_THRESHOLD_ is set"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096", "GLIBC_TUNABLES sets glibc.malloc"),
        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "jemalloc is preloaded"),
    ],
)
def test_the_users_choice_is_left_alone(clean_env, key, value, reason):
    clean_env.setenv(key, value)
    assert allocator.allocator_choice() == reason
    # ... and retain_freed_memory says so instead of calling mallopt
    clean_env.setattr(allocator, "_set_thresholds", lambda: pytest.fail("mallopt was called"))
    assert allocator.retain_freed_memory() == reason


@pytest.mark.skipif(not LINUX, reason="the thresholds are glibc's")
def test_nothing_set_means_it_is_ours_to_set(clean_env):
    assert allocator.allocator_choice() is None


def test_an_unknown_setting_is_refused_in_one_line(clean_env, capsys):
    clean_env.setenv(allocator.OPT_OUT, "jemalloc")
    with pytest.raises(ConfigError, match="IRESNET_ALLOCATOR='jemalloc': use 'system'"):
        allocator.allocator_choice()
    # the command line refuses it before any work, in one line, with status 2
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("iresnet presets: error: IRESNET_ALLOCATOR='jemalloc'")


def test_applied_once_per_process(clean_env):
    calls = []
    clean_env.setattr(allocator, "_set_thresholds", lambda: calls.append(1) or "set")
    assert allocator.retain_freed_memory() == "set"
    assert allocator.retain_freed_memory() == "set"
    assert calls == [1]


@pytest.mark.skipif(not LINUX, reason="the thresholds are glibc's")
def test_glibc_takes_both_thresholds_in_a_fresh_process():
    # A fresh process: mallopt changes the whole process, and the test runner's is left as is.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }
    env.pop(allocator.OPT_OUT, None)
    code = "from iresnet.app.allocator import retain_freed_memory; print(retain_freed_memory())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("glibc "), out
    assert out.strip().endswith(
        "freed memory kept (mmap threshold 32 MiB, trim threshold 128 MiB)"
    ), out


def test_train_verbose_says_which_setting_is_in_force(clean_env, capsys, tmp_path):
    clean_env.setenv(allocator.OPT_OUT, "system")
    assert main(["train", "--dry-run", "--verbose", "--out", str(tmp_path / "run")]) == 0
    assert "allocator: IRESNET_ALLOCATOR=system\n" in capsys.readouterr().err
