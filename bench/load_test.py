"""Load test: 8 concurrent gradio_client clients x 20 mixed requests (bad ones included) against the app.

Starts `app.py` on 127.0.0.1 (loopback only) with the built-in tiny model, records the serial result of every
distinct good request first, then runs the concurrent phase (bounded in count and time) and checks: 0 server
errors, every good response identical to its serial result, every bad one a clear error. Prints p50/p95
latency and the server's peak RSS. Exit status 0 only if all checks hold.
Run: `.venv/bin/python bench/load_test.py [--clients 8] [--requests 20]`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Hello, I'm a language model,", "The meaning of life is", "def fibonacci(n):", "Once upon a time"]
BAD = [  # (inputs override, text the error must contain: ours, or Gradio's own range/choice check that runs first)
    (dict(prompt="   "), "empty"),
    (dict(top_p=5.0), "greater than maximum value 1.0"),
    (dict(seed=-3), "seed"),
    (dict(model="../../etc/passwd"), "not in the list of choices"),
    (dict(fault="no_such_bug"), "not in the list of choices"),
    (dict(prompt="nul\x00byte"), "NUL"),
    (dict(temperature=-1.0), "less than minimum value 0.0"),
    (dict(prompt="x" * 1_000_000), "characters"),
]
GENERIC = "Something went wrong on our side"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request_mix(client_idx: int, n: int) -> list[tuple[dict, str | None]]:
    """Deterministic mix: every 5th request is bad; good ones vary prompt, seed, method, reference."""
    out = []
    for j in range(n):
        base = dict(prompt=PROMPTS[(client_idx + j) % len(PROMPTS)], model="tiny-random-gpt2", method="hf",
                    reference="generate", fault="none", top_k=50, top_p=1.0, temperature=1.0,
                    seed=(client_idx * 7 + j) % 5, num_sequences=2, max_new_tokens=8)
        if j % 5 == 4:
            override, expect = BAD[(client_idx + j) % len(BAD)]
            out.append(({**base, **override}, expect))
            continue
        variant = (client_idx + j) % 4
        if variant == 1:
            base.update(method="nanogpt")
        elif variant == 2:
            base.update(reference="pipeline", num_sequences=3)
        elif variant == 3:
            base.update(method="greedy", num_sequences=1, reference="logits")
        out.append((base, None))
    return out


def call(client, inputs: dict):
    order = ["prompt", "model", "method", "reference", "fault", "top_k", "top_p", "temperature", "seed",
             "num_sequences", "max_new_tokens"]
    result = client.predict(*[inputs[k] for k in order], api_name="/run")
    summary = result[11]
    return summary["ours_texts"], summary["hf_texts"], summary["verdict"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--time-limit", type=float, default=900, help="seconds for the whole run")
    args = ap.parse_args(argv)
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bpe = os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe")
    server = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random-gpt2", "--host", "127.0.0.1",
                               "--port", str(port), "--bpe-dir", bpe], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    deadline = time.time() + args.time_limit
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            print("server did not start")
            return 1
        up = time.perf_counter() - started
        first = Client(url, verbose=False)
        call(first, request_mix(0, 1)[0][0])  # the first request loads the tiny model
        print(f"app start to ready: HTTP up in {up:.1f} s, first answer (model loaded) at "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        mixes = [request_mix(i, args.requests) for i in range(args.clients)]
        good = {repr(sorted(inp.items())): inp for mix in mixes for inp, bad in mix if bad is None}
        serial_client = Client(url, verbose=False)
        print(f"serial phase: {len(good)} distinct good requests", flush=True)
        expected = {key: call(serial_client, inp) for key, inp in good.items()}

        latencies, problems = [], []
        lock = threading.Lock()

        def client_thread(i: int):
            client = Client(url, verbose=False)
            for inputs, bad in mixes[i]:
                if time.time() > deadline:
                    with lock:
                        problems.append(f"client {i}: time limit reached")
                    return
                t0 = time.perf_counter()
                try:
                    got = call(client, inputs)
                    err = None
                except Exception as exc:  # gradio_client raises AppError carrying the gr.Error message
                    got, err = None, str(exc)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if bad is None and err is not None:
                        problems.append(f"client {i}: good request failed: {err[:200]}")
                    elif bad is None and got != expected[repr(sorted(inputs.items()))]:
                        want = expected[repr(sorted(inputs.items()))]
                        parts = [name for name, a, b in zip(("ours", "hf", "verdict"), got, want) if a != b]
                        problems.append(f"client {i}: {'/'.join(parts)} differ from the serial run: "
                                        f"{inputs['method']}/{inputs['reference']} seed {inputs['seed']}: "
                                        f"{got[2]!r} vs {want[2]!r}")
                    elif bad is not None and (err is None or bad not in err or GENERIC in err):
                        problems.append(f"client {i}: bad request not refused clearly (wanted {bad!r}): {err!r:.200}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.time()))
        wall = time.perf_counter() - t0
        still_serving = call(serial_client, next(iter(good.values()))) == next(iter(expected.values()))
        n_bad = sum(1 for mix in mixes for _, bad in mix if bad is not None)
        lat = sorted(latencies)
        p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
        print(f"{args.clients} clients x {args.requests} requests = {len(latencies)} done in {wall:.1f} s "
              f"({n_bad} bad by design)")
        print(f"latency p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s, max {lat[-1]:.2f} s")
        print(f"server peak RSS {peak_rss_mib(server.pid):.0f} MiB; still serving afterwards: {still_serving}")
        print(f"problems: {len(problems)}")
        for p in problems[:20]:
            print("  ", p)
        return 0 if not problems and still_serving and len(latencies) == args.clients * args.requests else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    raise SystemExit(main())
