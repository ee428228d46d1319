"""`python -m core.parity --html FILE` (the report as one page beside the text or JSON output) and the progress bar
on long work: on a terminal only, never under --json or into a pipe."""

import fcntl
import json
import os
import struct
import sys
import termios
import threading
from io import StringIO

from core import progress
from core.cli import main_export, main_parity
from demo.report import read_report_html

ARGS = ["--max-new-tokens", "6", "--num-return-sequences", "2", "--fault", "untied_lm_head"]


def test_html_beside_text_and_json(tiny_checkpoint, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main_parity(["--model", str(tiny_checkpoint), *ARGS, "--html", str(page)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("verdict: DIFFER") and out[-1].startswith(f"wrote {page} (")
    first = read_report_html(page.read_text(encoding="utf-8"))
    assert first["agree"] is False and first["first_diverging_layer"] == "lm_head"

    page.unlink()
    assert main_parity(["--model", str(tiny_checkpoint), *ARGS, "--json", "--html", str(page)]) == 1
    report = json.loads(capsys.readouterr().out)  # stdout stays one JSON object
    assert read_report_html(page.read_text(encoding="utf-8"))["verdict"] == report["verdict"]


def test_html_refused_before_any_work(tmp_path, capsys):
    for target, words in ((tmp_path / "no" / "r.html", "no such directory"), (tmp_path, "is a directory")):
        assert main_parity(["--model", str(tmp_path / "no-model"), "--html", str(target)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_progress_wanted_only_at_a_terminal():
    class Tty(StringIO):
        def isatty(self):
            return True

    assert progress.wanted(False, Tty(), Tty())
    assert not progress.wanted(True, Tty(), Tty())  # --json
    assert not progress.wanted(False, StringIO(), Tty()) and not progress.wanted(False, Tty(), StringIO())


def test_progress_bars_on_a_terminal(tiny_checkpoint, tmp_path, monkeypatch):
    """A compare and an export of several cases with stdout and stderr on a pseudo-terminal (80 columns), as a
    person at a terminal runs them (in this process: the streams are the terminal's own file descriptor)."""
    main, tty = os.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen = []
    reader = threading.Thread(target=_drain, args=(main, seen), daemon=True)
    reader.start()
    with open(tty, "w", buffering=1, encoding="utf-8", closefd=False) as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main_parity(["--model", str(tiny_checkpoint), "--max-new-tokens", "30"]) == 0
        assert main_export(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "ref"), "--seeds", "1", "2", "3",
                            "--max-new-tokens", "4"]) == 0
        monkeypatch.undo()
    os.close(tty)
    reader.join(timeout=30)
    os.close(main)
    text = b"".join(seen).decode(errors="replace")
    assert "sampling:" in text and "comparing with HuggingFace:" in text and "/30 [" in text
    assert "exporting HF's reference:" in text and "3/3 [" in text
    assert "verdict: AGREE" in text and "wrote 3 case(s)" in text


def _drain(fd: int, into: list) -> None:
    """Read the terminal's other end until it closes (a full terminal buffer would block the writer)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.append(chunk)
