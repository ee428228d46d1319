"""`python -m core.parity --yours FILE.py:NAME`: the user's model (and sampling step) from the command line, with
exit codes 0 (agree), 1 (differ), 2 (bad input, one line)."""

import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from core.cli import main_parity
from core.usercode import UserCodeError, load_model

USER_FILE = '''
import sys
sys.path.insert(0, {root!r})
from examples.my_gpt2 import load

def build():
    return load({ckpt!r})

def broken():
    return load({ckpt!r}, mistake="softmax_over_queries")

model = build()
fn = lambda ids: model(ids)[0]

def seed_step(logits):
    import torch
    probs = torch.softmax(logits, dim=-1)
    p, i = torch.topk(probs, 50, dim=-1)
    return torch.gather(i, -1, torch.multinomial(p, 1))

not_a_model = 3
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("user") / "mine.py"
    path.write_text(USER_FILE.format(root=str(ROOT), ckpt=str(tiny_checkpoint)))
    return path


def run(tiny_checkpoint, *args):
    return main_parity(["--model", str(tiny_checkpoint), "--num-return-sequences", "2", "--max-new-tokens", "6",
                        "--tokenizer", str(tiny_checkpoint), *args])


@pytest.mark.parametrize("name", ["build", "model", "fn"])
def test_yours_agrees_exit_0(tiny_checkpoint, user_file, capsys, name):
    assert run(tiny_checkpoint, "--yours", f"{user_file}:{name}") == 0
    out = capsys.readouterr().out
    assert "verdict: AGREE - identical to HuggingFace" in out and "under test: Yours" in out
    assert "yours:" in out


def test_yours_with_a_mistake_exit_1(tiny_checkpoint, user_file, capsys):
    assert run(tiny_checkpoint, "--yours", f"{user_file}:broken", "--reference", "logits") == 1
    out = capsys.readouterr().out
    assert "verdict: DIFFER" in out and "first diverging layer: block 0" in out


def test_yours_step_runs_the_seed_experiment(tiny_checkpoint, user_file, capsys):
    code = run(tiny_checkpoint, "--yours", f"{user_file}:model", "--yours-step", f"{user_file}:seed_step",
               "--method", "nanogpt", "--reference", "pipeline", "--json")
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["sampler"] == "yours" and report["subject"] == "Yours"
    assert code == (0 if report["agree"] else 1)
    assert {r["cause"] for r in report["rows"] if not r["identical"]} <= {"settings"}


@pytest.mark.parametrize("args, message", [
    (["--yours", "nowhere.py:model"], "no such file: nowhere.py"),
    (["--yours", "{f}"], "expected path/to/file.py:NAME"),
    (["--yours", "{f}:nope"], "defines no 'nope'"),
    (["--yours", "{f}:not_a_model"], "is a int, not a model"),
    (["--yours", "{f}:model", "--yours-step", "{f}:not_a_model"], "not a function"),
    (["--yours", "{f}:model", "--fault", "erf_gelu"], "cannot be used with --yours"),
    (["--yours-step", "{f}:seed_step"], "go with --yours"),
    (["--yours", "{f}:model", "--yours-layers", "blocks"], "--yours-layers takes"),
    (["--yours", "{bad}:x"], "importing .* failed: ZeroDivisionError: division by zero"),
])
def test_bad_yours_exit_2_one_line(tiny_checkpoint, user_file, capsys, args, message):
    bad = user_file.parent / "bad.py"
    bad.write_text("x = 1 / 0\n")
    args = [a.format(f=user_file, bad=bad) for a in args]
    assert run(tiny_checkpoint, *args) == 2
    err = capsys.readouterr().err.strip()
    ours = [line for line in err.splitlines() if line.startswith("python -m core.parity: error: ")]
    assert len(ours) == 1 and "Traceback" not in err  # (the user's file may print, e.g. transformers' progress)
    err = ours[0]
    import re

    assert re.search(message, err), err


def test_factory_errors_are_user_errors(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        def factory():
            raise RuntimeError("weights not found")
        def returns_int():
            return 3
        import sys
        def exits():
            pass
        sys.exit(3) if False else None
    """))
    with pytest.raises(UserCodeError, match="calling factory\\(\\) to build the model failed: RuntimeError"):
        load_model(f"{f}:factory")
    with pytest.raises(UserCodeError, match="returned a int, not a model"):
        load_model(f"{f}:returns_int")
    g = tmp_path / "script.py"
    g.write_text("import sys\nsys.exit(1)\n")
    with pytest.raises(UserCodeError, match="called exit"):
        load_model(f"{g}:x")


def test_python_m_core_parity_yours_subprocess(tiny_checkpoint, user_file, bpe_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "core.parity", "--model", str(tiny_checkpoint), "--yours", f"{user_file}:build",
         "--num-return-sequences", "2", "--max-new-tokens", "4", "--reference", "logits"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "GPT2_BPE_DIR": str(bpe_dir), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "AGREE" in proc.stdout and "Traceback" not in proc.stderr
