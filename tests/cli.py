"""Run the real ``stune`` console script as a user would."""

import os
import subprocess
import sys
from pathlib import Path

STUNE = str(Path(sys.executable).with_name("stune"))


def run_stune(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([STUNE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr starting with 'error:', naming each fragment, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])
