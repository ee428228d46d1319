"""The files a run offers for download: the whole report as compact JSON (expand_report reads it back), one CSV
line per step and row, and on request the report as one HTML page (demo/report.py), each run in its own folder
under this process's temporary folder.

Knows the report's fields and the folders' life: one folder per server process (removed at exit; a killed
process never runs atexit, so the next process sweeps folders whose pid is gone), one sub-folder per run, only
the newest KEEP_RUNS kept (Gradio serves its own copies). Knows nothing of Gradio or of what the page shows.
"""

from __future__ import annotations

import atexit
import csv
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import threading

from . import text
from .divergence import report_divergences

# Per-token display data (the top-50 lists) is rounded to this many significant digits in the JSON download;
# the measured numbers behind the verdict (max |Δ|, tolerances, KL) keep full precision.
DOWNLOAD_DIGITS = 4
_ROUNDED = {"top_logits", "top_probs", "top_sample_probs", "hf_top_probs", "hf_top_sample_probs", "prob", "raw_prob",
            "entropy", "raw_entropy", "hf_prob"}
_DERIVED = {"top_kept", "top_tokens", "token"}  # top_kept = top_sample_probs > 0; strings are in "tokens" by id
KEEP_RUNS = 8  # run folders kept per server process (older ones are deleted; Gradio serves its own copies)


def _round(x, digits: int = DOWNLOAD_DIGITS):
    if isinstance(x, float) and math.isfinite(x) and x != 0.0:
        return float(f"{x:.{digits}g}")
    return x


def compact_report(report: dict) -> dict:
    """The report as the JSON download carries it: every field, but per-token display floats rounded to
    DOWNLOAD_DIGITS significant digits and each token string stored once (in "tokens", by id) instead of in
    every record. Zeros stay zeros (so top_kept is exactly top_sample_probs > 0)."""
    tokens: dict[str, str] = {}

    def record(rec: dict | None):
        if rec is None:
            return None
        tokens[str(rec["token_id"])] = rec["token"]
        for tid, tok in zip(rec["top_ids"], rec["top_tokens"]):
            tokens[str(tid)] = tok
        return {k: ([_round(x) for x in v] if isinstance(v, list) else _round(v)) if k in _ROUNDED else v
                for k, v in rec.items() if k not in _DERIVED}

    def step(d: dict | None):
        if d is None:
            return None
        return {k: ([_round(x) for x in v] if isinstance(v, list) else _round(v)) if k in _ROUNDED else v
                for k, v in d.items()}

    gen = dict(report["generation"])
    gen["records"] = [[record(r) for r in st] for st in gen["records"]]
    out = {"format": text.DOWNLOAD_FORMAT.format(digits=DOWNLOAD_DIGITS)}
    out.update({k: v for k, v in report.items() if k not in ("generation", "steps")})
    out["generation"] = gen
    out["steps"] = [[step(d) for d in st] for st in report["steps"]]
    out["tokens"] = tokens
    return out


def expand_report(compact: dict) -> dict:
    """Back from the download to the report's own shape (ParityReport.from_dict reads the result)."""
    tokens = compact["tokens"]
    out = {k: v for k, v in compact.items() if k not in ("format", "tokens")}
    gen = dict(out["generation"])
    gen["records"] = [[None if r is None else {**r, "token": tokens[str(r["token_id"])],
                                                "top_tokens": [tokens[str(t)] for t in r["top_ids"]],
                                                "top_kept": [p > 0 for p in r["top_sample_probs"]]}
                       for r in st] for st in gen["records"]]
    out["generation"] = gen
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _sweep_stale_run_dirs(tmp: str) -> None:
    """Remove download folders left by processes that are gone (killed servers never run atexit)."""
    for name in os.listdir(tmp):
        m = re.fullmatch(r"parity-lab-(\d+)-\w+", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class RunFolders:
    """This process's folder for download files (`path`, made on first use) and one sub-folder per run in it."""

    def __init__(self, keep: int = KEEP_RUNS):
        self.keep = keep
        self.path: str | None = None
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def folder(self) -> str:
        """The process's folder (removed at exit, or by the next process if this one is killed)."""
        with self._lock:
            if self.path is None or not os.path.isdir(self.path):
                _sweep_stale_run_dirs(tempfile.gettempdir())
                self.path = tempfile.mkdtemp(prefix=f"parity-lab-{os.getpid()}-")
                atexit.register(shutil.rmtree, self.path, True)
            return self.path

    def new_run(self) -> str:
        """A fresh folder for one run's files; only the newest `keep` folders are kept."""
        base = self.folder()
        with self._lock:
            folder = os.path.join(base, f"run-{next(self._counter):06d}")
            os.makedirs(folder)
            runs = sorted(d for d in os.listdir(base) if d.startswith("run-"))
            for old in runs[:-self.keep]:
                shutil.rmtree(os.path.join(base, old), ignore_errors=True)
        return folder


RUNS = RunFolders()


def write_downloads(report: dict) -> tuple[str, str]:
    """The run as compact JSON (the whole report) and CSV (one line per step and row)."""
    folder = RUNS.new_run()
    json_path = os.path.join(folder, "parity_report.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(compact_report(report), f, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    divs = report_divergences(report)
    csv_path = os.path.join(folder, "parity_steps.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "row", "token_id", "token", "ours_prob", "ours_rank", "hf_prob", "hf_rank",
                    "max_abs_dlogit", "tolerance", "exceeds", "kl", "total_variation", "js_bits", "divergence_exact",
                    "top1_agree", "top50_overlap", "entropy"])
        for step, (records, diffs, dv) in enumerate(zip(report["generation"]["records"], report["steps"], divs)):
            for rec, d, v in zip(records, diffs, dv):
                if rec is None or d is None:
                    continue
                w.writerow([step, rec["row"], rec["token_id"], rec["token"], rec["prob"], rec["rank"], d["hf_prob"],
                            d["hf_rank"], d["max_abs_dlogit"], d["tolerance"], d["exceeds"], d["kl"], v.tv, v.js,
                            v.exact, d["top1_agree"], d["top50_overlap"], rec["entropy"]])
    return json_path, csv_path


def write_html(report: dict) -> str:
    """The run as one self-contained HTML page (demo/report.py), in a run folder of its own."""
    from .report import page_html

    path = os.path.join(RUNS.new_run(), "parity_report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page_html(report))
    return path
