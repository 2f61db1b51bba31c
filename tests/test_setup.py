"""scripts/setup.sh on an already set-up machine: idempotent, non-interactive, one line per phase.

Its Python phase installs into a fresh venv (seeing this interpreter's packages), never into the shared
interpreter that runs the tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.docker
def test_setup_rerun_is_a_quiet_no_op(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {**os.environ, "CI": "true", "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900)
    if os.getuid() != 0:
        assert proc.returncode == 1 and proc.stderr.strip().endswith("sudo bash scripts/setup.sh")
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    phases = [line.split()[1] for line in lines]
    assert phases == ["engine", "apt", "docker", "python", "lint", "actionlint", "done"], proc.stdout
    assert "already installed" in lines[1] and "engine answers" in lines[2]  # an existing engine is left alone
    assert proc.stderr == ""
