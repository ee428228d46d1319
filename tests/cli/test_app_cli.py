"""`python app.py` from the command line: a bad --yours stops the start with one line and exit status 2. The
dashboard it starts is tested in tests/app and tests/browser."""

import subprocess
import sys

import pytest

from apphelper import ROOT, TINY_MODEL

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, message", [
    (["--yours", "missing.py:model"], "no such file: missing.py"),
    (["--yours-step", "x.py:f"], "go with --yours"),
])
def test_bad_yours_stops_the_app_with_one_line(bpe_dir, args, message):
    proc = subprocess.run([sys.executable, "app.py", "--model", TINY_MODEL, "--bpe-dir", str(bpe_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.strip() == f"app.py: error: {message}" or message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
