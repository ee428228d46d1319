"""`python -m core.generate`: its output against HuggingFace generate(); bad input is one line and exit status 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from core import generate, load_pretrained, load_tokenizer
from core.cli import main_generate

PROMPT = "Hello, I'm a language model,"
PROG = "python -m core.generate"


def run_cli(argv, capsys):
    """main_generate in-process -> (exit status, stdout, stderr); argparse's own errors raise SystemExit."""
    try:
        code = main_generate(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def hf_side(tiny_checkpoint, bpe_dir):
    """HF's own model and tokenizer for the checkpoint directory (the independent reference)."""
    hf = GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()
    tok = GPT2TokenizerFast(vocab=str(bpe_dir / "encoder.json"), merges=str(bpe_dir / "vocab.bpe"))
    return hf, tok


def hf_rows(hf_side, seed, prompt=PROMPT, n=5, max_length=30):
    hf, tok = hf_side
    x = torch.tensor([tok.encode(prompt)])
    torch.manual_seed(seed)
    return hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, top_k=50,
                       max_length=max_length, num_return_sequences=n).tolist()


def check_rows(out, hf_side, expected):
    _, tok = hf_side
    P = len(out["prompt_ids"])
    assert out["prompt_ids"] == tok.encode(out["prompt"])
    assert [row["token_ids"] for row in out["rows"]] == expected
    for row in out["rows"]:
        assert row["new_token_ids"] == row["token_ids"][P:]  # no row of this model reaches eos in 30 tokens
        assert row["finished_by_eos"] is False
        assert row["text"] == tok.decode(row["token_ids"])


def test_json_matches_the_python_api_and_hf(tiny_checkpoint, hf_side, capsys):
    code, out, err = run_cli(["--model", str(tiny_checkpoint), "--json", "--seed", "7"], capsys)
    assert code == 0, err
    data = json.loads(out)
    api = generate(load_pretrained(tiny_checkpoint), PROMPT, tokenizer=load_tokenizer(tiny_checkpoint), seed=7,
                   num_return_sequences=5, max_length=30)
    assert [row["token_ids"] for row in data["rows"]] == api.sequences
    assert [row["text"] for row in data["rows"]] == api.texts
    check_rows(data, hf_side, hf_rows(hf_side, 7))
    assert data["settings"]["seed"] == 7
    assert data["device"] == "cpu" and data["dtype"] == "float32"


def test_defaults_are_the_seeds_example(tiny_checkpoint, hf_side, capsys):
    code, out, err = run_cli(["--model", str(tiny_checkpoint), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["prompt"] == PROMPT
    assert len(data["rows"]) == 5 and all(len(row["token_ids"]) == 30 for row in data["rows"])
    check_rows(data, hf_side, hf_rows(hf_side, 42))  # default seed 42, top-k 50, temperature 1
    # the text form prints the same five rows
    code, text, err = run_cli(["--model", str(tiny_checkpoint)], capsys)
    assert code == 0, err
    assert text.splitlines() == [f"> {row['text']}" for row in data["rows"]]


def test_python_m_core_generate(tiny_checkpoint, hf_side, bpe_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GPT2_BPE_DIR=str(bpe_dir))
    proc = subprocess.run([sys.executable, "-m", "core.generate", "--model", str(tiny_checkpoint), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    check_rows(data, hf_side, hf_rows(hf_side, 42))


LONG_PROMPT = "hello" * 140  # 140 tokens for GPT-2's BPE; the tiny model has n_positions=128


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--top-p", "2"], "top_p"),
        (["--top-k", "-1"], "top_k"),
        (["--temperature", "-1"], "temperature"),
        (["--num-return-sequences", "0"], "num_return_sequences"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--seed", "-5"], "seed"),
        (["--method", "beam"], "--method"),
        (["--dtype", "float16"], "--dtype"),
        (["--model", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--device", "cuda"], "CUDA"),
        (["--prompt", LONG_PROMPT, "--max-new-tokens", "5"], "n_positions=128"),
        (["--prompt", LONG_PROMPT], "140"),
    ],
    ids=lambda x: x if isinstance(x, str) else " ".join(a if len(a) < 20 else a[:8] + "..." for a in x),
)
def test_bad_arguments_exit_2_with_one_line(tiny_checkpoint, capsys, monkeypatch, argv, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "no CUDA here", on any machine
    if "--model" not in argv:
        argv = ["--model", str(tiny_checkpoint), *argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    message = lines[-1]
    assert message.startswith(f"{PROG}: error: ") and match in message, err
    # the message is one line; argparse's own errors may put its usage block above it
    assert all(": error:" not in line for line in lines[:-1])
    if len(lines) > 1:
        assert lines[0].startswith("usage: ") and all(line.startswith(" ") for line in lines[1:-1]), err


def test_hub_id_offline_and_not_cached(capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing is there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = run_cli(["--model", "gpt2"], capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: ") and "'gpt2'" in err
    assert "local checkpoint directory" in err
