"""`python -m core.generate` against a stand-in Hub on 127.0.0.1 (tests/fake_hub.py), healthy and with every kind of
failure: exit status 0 and HF's own tokens, or 2 and one line naming the failure, in bounded time. The same Hub
path through the Python API and the dashboard is tested in tests/app/test_hub.py."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT


# ---------------------------------------------------------------------------------------------------------
# Command line, in a subprocess pointed at the stand-in Hub (HF_ENDPOINT is read at import)


CLI_BUDGET_S = 6  # per model; the healthy case runs with the default budget


def run_cli(hub, tmp_path, argv, budget=True):
    full_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    full_env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
                    PARITY_LAB_HUB_TIMEOUT="1")
    if budget:
        full_env["PARITY_LAB_HUB_BUDGET"] = str(CLI_BUDGET_S)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "core.generate", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=90)
    return proc, time.monotonic() - start


CLI_CASES = [
    ("healthy", "gpt2", [], 0, None),
    ("stalled Hub", "gpt2", [dict(path=".", stall=True)], 2, "stopped answering while getting config.json of 'gpt2'"),
    ("stalled weights", "gpt2", [dict(path="^/lfs/", stall_body=True)], 2, "while getting the weights and tokenizer"),
    ("Hub answering 503", "gpt2", [dict(path="resolve", status=503)], 2, "HTTP 503 Service Unavailable"),
    ("typo", "gpt-2", [], 2, "there is no model 'gpt-2' on the Hugging Face Hub"),
]


@pytest.mark.parametrize("label,model,faults,code,text", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_against_the_stand_in_hub(hub, tmp_path, tiny_hf, label, model, faults, code, text):
    hub.clear()
    for f in faults:
        hub.fault(**f)
    proc, elapsed = run_cli(hub, tmp_path, ["--model", model, "--json", "--num-return-sequences", "2",
                                            "--max-new-tokens", "4"], budget=code != 0)
    hub.clear()
    print(f"\n[{label}] exit {proc.returncode} in {elapsed:.1f} s: {proc.stderr.strip().splitlines()[-1:] }")
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 60
    if code == 0:
        rows = json.loads(proc.stdout)["rows"]
        ids = torch.tensor([json.loads(proc.stdout)["prompt_ids"]])
        torch.manual_seed(42)
        expected = tiny_hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50,
                                    max_new_tokens=4, num_return_sequences=2).tolist()
        assert [r["token_ids"] for r in rows] == expected
        return
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m core.generate: error: ") and text in last, proc.stderr
    assert proc.stdout == ""
    if label.startswith("stalled"):
        assert elapsed < CLI_BUDGET_S + 25, elapsed  # the budget plus interpreter start-up and imports
