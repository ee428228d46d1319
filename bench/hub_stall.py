"""How long a request for a resident model takes while another model's Hub download hangs (the real app, over HTTP).

Starts the stand-in Hub (tests/fake_hub.py) on 127.0.0.1 serving random-init GPT-2 checkpoints as `gpt2` and
`gpt2-medium`, and `python app.py --model gpt2` pointed at it (HF_ENDPOINT, a temporary HF_HOME). Makes `gpt2`
resident with one Generate, then, while 0, 1 or 2 gradio_client users ask for `gpt2-medium` (whose every Hub
request stalls), times a Generate on the resident `gpt2` and on the built-in tiny model. Prints each time and
its ratio to the same request with no download hanging. Everything is local and bounded.
Run: `.venv/bin/python bench/hub_stall.py [--shape tiny|124m] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from apphelper import AppServer  # noqa: E402
from fake_hub import FakeHub, checkpoint_files  # noqa: E402

SHAPES = {"tiny": dict(n_layer=2, n_head=2, n_embd=32, n_positions=128),
          "124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)}
ARGS = ("Hello, I'm a language model,", None, "hf", "generate", "none", 50, 1.0, 1.0, 42, 1, 8)


def checkpoint(shape: dict, folder: Path, bpe_dir: Path) -> dict[str, bytes]:
    from core.structured import random_gpt2

    random_gpt2(seed=0, logit_std=None, **shape).save_pretrained(folder)
    files = checkpoint_files(folder)
    files["vocab.json"] = (bpe_dir / "encoder.json").read_bytes()
    files["merges.txt"] = (bpe_dir / "vocab.bpe").read_bytes()
    return files


def run(client, model: str) -> tuple[float, str]:
    args = list(ARGS)
    args[1] = model
    start = time.perf_counter()
    try:
        client.predict(*args, api_name="/run")
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - the hung model's requests end in a gr.Error
        outcome = str(exc).splitlines()[0][:120]
    return time.perf_counter() - start, outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from gradio_client import Client

    bpe_dir = ROOT / "core" / "gpt2_bpe"
    tmp = Path(tempfile.mkdtemp(prefix="hub-stall-"))
    files = checkpoint(SHAPES[args.shape], tmp / "ckpt", bpe_dir)
    with FakeHub(max_stall_s=120) as hub:
        hub.add_repo("openai-community/gpt2", files, alias="gpt2")
        for stalled in ("gpt2-medium", "gpt2-large"):
            hub.add_repo(f"openai-community/{stalled}", files, alias=stalled)
            hub.fault(stalled, stall=True)
        env = dict(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home"), PARITY_LAB_HUB_TIMEOUT="30",
                   PARITY_LAB_HUB_BUDGET="60")
        old_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        app = AppServer(bpe_dir, model="gpt2", log_dir=tmp)
        try:
            # AppServer starts the app offline; this bench needs the (stand-in) Hub: start it ourselves
            app.proc = subprocess.Popen(app.cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "0",
                                                                "GRADIO_ANALYTICS_ENABLED": "False"},
                                        stdout=open(app.log_path, "wb"), stderr=subprocess.STDOUT)
            app._wait_ready(120)
            client = Client(app.url, verbose=False)
            start, outcome = time.perf_counter(), ""
            while outcome != "ok" and time.perf_counter() - start < 120:  # the app started gpt2's download at launch
                outcome = run(client, "gpt2")[1]
            print(f"shape {args.shape}: gpt2 resident {time.perf_counter() - start:.2f} s after the first Generate "
                  f"({outcome})")
            for model in ("gpt2", "tiny-random-gpt2"):
                run(client, model)  # warm
            baseline = {m: [run(client, m)[0] for _ in range(args.repeat)] for m in ("gpt2", "tiny-random-gpt2")}
            for hung_users, stalled in ((1, "gpt2-medium"), (2, "gpt2-large")):  # a fresh stalled load each
                results: list = []
                hung = [threading.Thread(target=lambda: results.append(run(Client(app.url, verbose=False), stalled)))
                        for _ in range(hung_users)]
                for t in hung:
                    t.start()
                time.sleep(1.0)  # their requests are in, gpt2-medium's download is stalled
                for model in ("gpt2", "tiny-random-gpt2"):
                    times = [run(client, model)[0] for _ in range(args.repeat)]
                    base = statistics.median(baseline[model])
                    print(f"{hung_users} user(s) waiting on a hung {stalled} download: Generate on {model}: "
                          f"median {statistics.median(times):.2f} s (max {max(times):.2f}) vs {base:.2f} s with "
                          f"nothing hanging: x{statistics.median(times) / base:.2f}")
                for t in hung:
                    t.join(180)
                print(f"  the hung users' own requests ended after {', '.join(f'{r[0]:.1f} s' for r in results)}: "
                      f"{results[0][1] if results else '?'}")
            log = app.log()
            print("server log lines about models:")
            for line in log.splitlines():
                if "parity_lab" in line:
                    print("  ", line[:200])
        finally:
            app.stop()
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
