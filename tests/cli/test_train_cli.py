"""`python -m core.parity train`: training parity from the command line, exit 0 (agree), 1 (differ), 2 (bad input,
one line); our own GPT with a training --fault, yours with --yours FILE.py:NAME."""

import json

import torch

import pytest
from conftest import ROOT

from core.cli import main_parity

USER_FILE = '''
import sys
sys.path.insert(0, {root!r})
import torch
from examples.my_gpt2 import load

def build():
    return load({ckpt!r})

def decay_everything(params):
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

fn = lambda ids: build()(ids)[0]
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("user") / "mine_train.py"
    path.write_text(USER_FILE.format(root=str(ROOT), ckpt=str(tiny_checkpoint)))
    return path


def train(tiny_checkpoint, *args):
    return main_parity(["train", "--model", str(tiny_checkpoint), "--batch-size", "2", "--seq-len", "12", *args])


def test_yours_agrees_exit_0_with_steps(tiny_checkpoint, user_file, capsys):
    assert train(tiny_checkpoint, "--yours", f"{user_file}:build", "--steps", "2") == 0
    out = capsys.readouterr().out
    assert "verdict: AGREE" in out and "under test: Yours" in out and "step 2:" in out


def test_your_optimizer_decaying_everything_exit_1(tiny_checkpoint, user_file, capsys):
    assert train(tiny_checkpoint, "--yours", f"{user_file}:build", "--steps", "1",
                 "--yours-optimizer", f"{user_file}:decay_everything") == 1
    out = capsys.readouterr().out
    assert "weight decay applied to biases and LayerNorm gains" in out


def test_our_gpt_with_a_fault_exit_1_json(tiny_checkpoint, capsys):
    assert train(tiny_checkpoint, "--fault", "detach@last", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["first_diverging_layer"] == "block 1" and report["agree"] is False
    assert report["first_diverging_parameter"] == "transformer.h.1.ln_1.weight" and report["fault"] == "detach@last"


@pytest.mark.parametrize("args, message", [
    (["--fault", "nope"], "unknown training fault"),
    (["--fault", "decay_all"], "pass --steps 1 or more"),
    (["--steps", "-2"], "steps must be"),
    (["--seq-len", "5000"], "exceeds the model's context"),
    (["--yours", "missing.py:model"], "no such file"),
])
def test_bad_input_exit_2_one_line(tiny_checkpoint, capsys, args, message):
    assert train(tiny_checkpoint, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_argparse_refusal_exit_2(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        train(tiny_checkpoint, "--precision", "bfloat16")
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_plain_function_refused_and_list_faults(tiny_checkpoint, user_file, capsys):
    assert train(tiny_checkpoint, "--yours", f"{user_file}:fn") == 2
    assert "nn.Module" in capsys.readouterr().err
    assert main_parity(["train", "--list-faults"]) == 0
    assert "untied_head_copy" in capsys.readouterr().out


def test_training_files_round_trip_exit_codes(tiny_checkpoint, tmp_path, capsys):
    ref = tmp_path / "train_ref.safetensors"
    assert train(tiny_checkpoint, "--export-reference", str(ref)) == 0
    # HF's own reference handed back as a result: the same numbers, so exit 0; a result file of the wrong kind: 2
    from core.parity.train_dump import load_training, save_training, training_result_manifest

    r = load_training(ref, "training-reference")
    tensors = {"loss": torch.tensor([r.loss]), "logits": r.logits, **{f"grad.{n}": g for n, g in r.grads.items()}}
    res = save_training(tmp_path / "res.safetensors", training_result_manifest(r.manifest), tensors)
    assert train(tiny_checkpoint, "--reference", str(ref), "--result", str(res)) == 0
    tensors["grad.transformer.wpe.weight"] = tensors["grad.transformer.wpe.weight"] + 1e-3
    bad = save_training(tmp_path / "bad.safetensors", training_result_manifest(r.manifest), tensors)
    assert train(tiny_checkpoint, "--reference", str(ref), "--result", str(bad)) == 1
    assert "transformer.wpe.weight" in capsys.readouterr().out
    assert train(tiny_checkpoint, "--reference", str(ref), "--result", str(ref)) == 2
    assert train(tiny_checkpoint, "--llmc-state", str(tmp_path / "missing.bin")) == 2
    assert "no llm.c state file" in capsys.readouterr().err


def test_dropout_on_request(tiny_checkpoint, capsys):
    """--dropout: our GPT has no dropout, GPT-2 drops after the embeddings: exit 1, the difference named as dropout."""
    assert train(tiny_checkpoint) == 0
    capsys.readouterr()
    assert train(tiny_checkpoint, "--dropout") == 1
    out = capsys.readouterr().out
    assert "embeddings" in out and "your dropout differs from GPT-2's" in out
