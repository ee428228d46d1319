"""Start the dashboard (`python app.py`) as a real server process for end-to-end tests, and stop it again.

Used by tests/browser (Playwright + Chromium) and tests/app/test_client.py (gradio_client): both drive the same
subprocess, started exactly as a user would start it, on a free local port, offline. Also: what the page-load
handler finally shows (page_load), for the tests that call it directly; and the server started with a user's own
model (`--yours`, start_yours_app).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = "tiny-random-gpt2"
START_TIMEOUT_S = 120.0  # a cold first start (the suite now begins with tests/app) on a busy 2-core machine


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py --model ... --port ...` in a subprocess; its stdout+stderr go to a log file."""

    def __init__(self, bpe_dir: str | os.PathLike, model: str = TINY_MODEL, port: int | None = None,
                 log_dir: str | os.PathLike | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = [sys.executable, "app.py", "--model", model, "--host", "127.0.0.1", "--port", str(self.port),
                    "--bpe-dir", str(bpe_dir)]
        log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="parity-app-"))
        self.log_path = log_dir / f"app-{self.port}.log"
        self.env = dict(env or {})  # over the defaults below (offline, no analytics)
        self.proc: subprocess.Popen | None = None
        self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT_S) -> "AppServer":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.proc.returncode} before serving "
                                   f"({' '.join(self.cmd)}); its log:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(f"the app did not answer HTTP 200 on {self.url} within {timeout:.0f} s (last: {last}); "
                           f"its log:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None and not self._log.closed:
            self._log.close()

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_app(request, bpe_dir, model: str = TINY_MODEL, log_dir=None, timeout: float = START_TIMEOUT_S) -> AppServer:
    """Start the app for a pytest fixture and register its termination as the fixture's finalizer."""
    server = AppServer(bpe_dir, model=model, log_dir=log_dir)
    request.addfinalizer(server.stop)
    return server.start(timeout)


def page_load(on_load):
    """The page-load handler's last update (banner, model menu): it streams the fallback first, then settles."""
    updates = list(on_load(progress=lambda *a, **k: None))
    assert updates, "the page-load handler showed nothing"
    return updates[-1]


YOURS_FILE = '''  # a user's model file for `--yours FILE.py:model`: HF's tiny model, re-implemented
import sys
sys.path.insert(0, {root!r})
from demo.models import build_tiny_pair
from examples.my_gpt2 import from_hf_state_dict

_, hf = build_tiny_pair()
model = from_hf_state_dict(hf.state_dict(), hf.config)
'''


def write_yours_file(folder: Path) -> Path:
    """YOURS_FILE written to folder/mine.py, for `python app.py --yours mine.py:model`."""
    path = folder / "mine.py"
    path.write_text(YOURS_FILE.format(root=str(ROOT)))
    return path


def start_yours_app(request, bpe_dir, user_file: Path, log_dir) -> AppServer:
    """`python app.py --yours USER_FILE:model` on the tiny model, stopped at the end of the requesting scope."""
    server = AppServer(bpe_dir, model=TINY_MODEL, log_dir=log_dir)
    server.cmd += ["--yours", f"{user_file}:model"]
    request.addfinalizer(server.stop)
    return server.start(120)
