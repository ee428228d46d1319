"""`python -m core.parity`: the bug lab's faults and --precision from the command line, with exit codes 0 (agree),
1 (differ), 2 (bad input, one line)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from core import FAULTS
from core.cli import main_parity


def test_cli_no_fault_exits_0(tiny_checkpoint, capsys):
    code = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["agree"] is True and out["verdict_kind"] == "logits_agree" and out["fault"] is None


@pytest.mark.parametrize("name", list(FAULTS))
def test_cli_exits_1_for_every_fault(tiny_checkpoint, capsys, name):
    code = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--fault", name, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["agree"] is False and out["verdict_kind"] == "model" and out["fault"] == name
    assert out["first_diverging_layer"] == FAULTS[name].expected_layer(2)  # on the 2-layer, 32-dim model too


def test_cli_fault_in_one_block(tiny_checkpoint, capsys):
    code = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--fault", "erf_gelu@1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["first_diverging_layer"] == "block 1" and out["fault"] == "erf_gelu@1"
    assert out["first_diverging_sublayer"] == "block 1 MLP" and out["diverging_blocks"] == [1]
    assert out["diagnosis"] == ["block 1's MLP matches HuggingFace with exact erf GELU `nn.GELU()`, where GPT-2 uses "
                                "the tanh approximation `nn.GELU(approximate='tanh')`"]
    code = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--fault", "erf_gelu@1"])
    text = capsys.readouterr().out
    assert code == 1 and "first diverging sub-layer: block 1 MLP\n" in text
    assert "blocks that differ on HF's own input (each block given HF's residual stream): 1\n" in text
    assert "likely mistake:\n  - block 1's MLP matches HuggingFace with exact erf GELU" in text
    for bad, match in (("erf_gelu@9", "blocks 0 to 1"), ("erf_gelu@x", "unknown fault")):
        code = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--fault", bad])
        err = capsys.readouterr().err
        assert code == 2 and match in err.strip().splitlines()[-1] and "Traceback" not in err, err


def test_python_m_core_parity(tiny_checkpoint, bpe_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GPT2_BPE_DIR=str(bpe_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "core.parity", "--model", str(tiny_checkpoint), "--reference", "logits",
         "--fault", "no_causal_mask", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["agree"] is False and out["fault"] == "no_causal_mask"
    assert out["first_diverging_layer"] == FAULTS["no_causal_mask"].first_layer


@pytest.mark.parametrize("args, code", [(["--precision", "bfloat16"], 0), (["--dtype", "bfloat16"], 0),
                                        (["--precision", "bfloat16-autocast", "--fault", "c_proj_not_transposed"], 1),
                                        (["--precision", "int8"], 2),
                                        (["--dtype", "bfloat16", "--precision", "float16"], 2)])
def test_cli_precision_exit_codes(tiny_checkpoint, capsys, args, code):
    try:
        got = main_parity(["--model", str(tiny_checkpoint), "--reference", "logits", "--json",
                           "--num-return-sequences", "2", "--max-new-tokens", "6", *args])
    except SystemExit as e:  # argparse refuses an unknown choice itself, with the same exit status
        got = e.code
    out = capsys.readouterr()
    assert got == code, out.err
    if code < 2:
        report = json.loads(out.out)
        assert report["precision"]["name"] in ("bfloat16", "bfloat16-autocast")
        assert report["verdict"].startswith("consistent with bfloat16" if code == 0 else "differs beyond bfloat16")
    else:
        assert "error:" in out.err


def test_python_m_entry_points_print_no_runtime_warning():
    """Issue 12 item 6: `python -m core.parity` must not be a module that `core/__init__` imports first."""
    for module in ("core.parity", "core.generate"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=90, env=dict(os.environ, PYTHONWARNINGS="default"))
        assert proc.returncode == 0, proc.stderr
        assert "RuntimeWarning" not in proc.stderr, f"{module}: {proc.stderr}"
