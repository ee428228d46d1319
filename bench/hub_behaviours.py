"""What a user sees for each Hub behaviour, with the default time limits: the CLI (exit status, time, message) and
the dashboard (its message, and when the failure is known), against the stand-in Hub (tests/fake_hub.py).

Everything is local (127.0.0.1) and bounded. Prints one block per behaviour (a Markdown table row at the end).
Run: `.venv/bin/python bench/hub_behaviours.py [--only LABEL]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_hub import FakeHub, checkpoint_files  # noqa: E402

BEHAVIOURS = [  # (label, model, faults, env)
    ("healthy Hub", "gpt2", [], {}),
    ("offline (HF_HUB_OFFLINE=1), not cached", "gpt2", [], {"HF_HUB_OFFLINE": "1"}),
    ("offline (TRANSFORMERS_OFFLINE=1), not cached", "gpt2", [], {"TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": None}),
    ("Hub unreachable (connection refused)", "gpt2", "closed", {}),
    ("Hub accepts connections, never answers", "gpt2", [dict(path=".", stall=True)], {}),
    ("Hub answers 503", "gpt2", [dict(path=".", status=503)], {}),
    ("model API answers 500", "gpt2", [dict(path="^/api/models/", status=500)], {}),
    ("LFS host answers 500", "gpt2", [dict(path="^/lfs/", status=500)], {}),
    ("weights body stalls", "gpt2", [dict(path="^/lfs/", stall_body=True)], {}),
    ("typo (gtp2)", "gtp2", [], {}),
    ("not a GPT-2 (bert)", "google-bert/bert-base-uncased", [], {}),
    ("no safetensors (.bin only)", "someone/gpt2-bin-only", [], {}),
    ("gated", "someone/gated-gpt2", [], {}),
]


def make_files(tmp: Path) -> dict[str, bytes]:
    from core.structured import random_gpt2

    random_gpt2(seed=0, logit_std=None, n_layer=2, n_head=2, n_embd=32, n_positions=128).save_pretrained(tmp / "ckpt")
    files = checkpoint_files(tmp / "ckpt")
    files["vocab.json"] = (ROOT / "core" / "gpt2_bpe" / "encoder.json").read_bytes()
    files["merges.txt"] = (ROOT / "core" / "gpt2_bpe" / "vocab.bpe").read_bytes()
    return files


def closed_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def dashboard_side(endpoint: str, home: str, model: str, env: dict) -> tuple[str, float]:
    """In a subprocess (huggingface_hub reads HF_ENDPOINT at import): the dashboard's own wording, and when known."""
    code = f"""
import time, json
from demo.models import ModelCache
cache = ModelCache(wait_s=1e9)
t = time.monotonic()
try:
    cache.get({model!r}, wait_s=1e9)
    out = "loaded"
except Exception as exc:
    out = str(exc)
print(json.dumps([out, time.monotonic() - t]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(endpoint, home, env), capture_output=True,
                          text=True, timeout=600)
    try:
        return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return f"(no answer: {proc.stderr[-300:]})", float("nan")


def _env(endpoint: str, home: str, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PARITY_LAB_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=home, HF_HUB_OFFLINE="0", GPT2_BPE_DIR=str(ROOT / "core" / "gpt2_bpe"))
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run only behaviours whose label contains this")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hub-behaviours-"))
    files = make_files(tmp)
    config = json.loads(files["config.json"])
    rows = []
    with FakeHub(max_stall_s=300) as hub:
        hub.add_repo("openai-community/gpt2", files, alias="gpt2")
        hub.add_repo("google-bert/bert-base-uncased", {"config.json": json.dumps({"model_type": "bert"}).encode(),
                                                       "model.safetensors": b"\0" * 4096})
        hub.add_repo("someone/gpt2-bin-only", {"config.json": json.dumps(config).encode(), "pytorch_model.bin": b"x"})
        hub.add_repo("someone/gated-gpt2", files, gated=True)
        for i, (label, model, faults, extra) in enumerate(BEHAVIOURS):
            if args.only and args.only not in label:
                continue
            hub.clear()
            endpoint = closed_url() if faults == "closed" else hub.url
            for f in faults if isinstance(faults, list) else []:
                hub.fault(**f)
            home = str(tmp / f"home-{i}")
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "core.generate", "--model", model, "--max-new-tokens", "3",
                                   "--num-return-sequences", "1"], cwd=ROOT, env=_env(endpoint, home, extra),
                                  capture_output=True, text=True, timeout=600)
            cli_s = time.monotonic() - start
            last = (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else proc.stdout.strip()[:80]
            ui, ui_s = dashboard_side(endpoint, str(tmp / f"home-ui-{i}"), model, extra)
            print(f"--- {label}\nCLI: exit {proc.returncode} after {cli_s:.1f} s: {last}\n"
                  f"dashboard: after {ui_s:.1f} s: {ui}\n", flush=True)
            rows.append(f"| {label} | exit {proc.returncode}, {cli_s:.1f} s: {last} | {ui_s:.1f} s: {ui} |")
    print("| Hub behaviour | CLI (`python -m core.generate --model M`) | dashboard (ModelCache, its own wording) |")
    print("|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
