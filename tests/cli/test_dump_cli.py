"""`python -m core.parity export` and `check`: HF's reference written from the command line, a result file checked
against it, with exit codes 0 (agree), 1 (differ), 2 (bad input, one line); and the command without a subcommand
unchanged. The dump format itself (its API, its spec, its precisions) is tested in tests/core/test_dump.py."""

import json

import pytest
from conftest import run_cli

from core import port_from_hf
from core.faults import apply_fault
from core.parity.dump import load_reference, result_from_gpt, save_result


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    from core.loader import load_hf_model

    return port_from_hf(load_hf_model(tiny_checkpoint))


def test_cli_export_and_check(tiny_checkpoint, tmp_path, ours, tokenizer, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\nThe quick brown fox\n")
    out = tmp_path / "ref"
    rc, stdout, stderr = run_cli(capsys, "export", "--model", tiny_checkpoint, "--prompts", prompts, "--out", out, "--seeds",
                              "1", "2", "--max-new-tokens", "3", "--num-return-sequences", "2")
    assert rc == 0, stderr
    assert "wrote 4 case(s)" in stdout and "MiB" in stdout
    ref = load_reference(out)
    assert "case0.hidden" not in ref.tensors and not ref.manifest["layers"]
    good = save_result(tmp_path / "good.safetensors", *result_from_gpt(ours, ref, layers=False))
    rc, stdout, _ = run_cli(capsys, "check", "--reference", out, "--yours", good)
    assert rc == 0 and "verdict: AGREE - identical to HuggingFace" in stdout and "4 of 4 case(s) agree" in stdout
    bad = save_result(tmp_path / "bad.safetensors", *result_from_gpt(apply_fault(ours, "untied_lm_head"), ref,
                                                                     layers=False))
    rc, stdout, _ = run_cli(capsys, "check", "--reference", out, "--yours", bad, "--json")
    data = json.loads(stdout)
    assert rc == 1 and data["agree"] is False
    assert {c["verdict_kind"] for c in data["cases"]} == {"model"}
    # without hidden states no layer can be named (as compare() says of a model whose layers it cannot see)
    assert all(c["first_diverging_layer"] is None and "per-layer comparison not available" in c["verdict"]
               for c in data["cases"])
    rc, stdout, stderr = run_cli(capsys, "check", "--reference", out, "--yours", prompts)
    assert rc == 2 and stderr.count("\n") == 1 and "not a safetensors file" in stderr and "Traceback" not in stderr
    rc, _, stderr = run_cli(capsys, "export", "--model", tiny_checkpoint, "--out", out, "--seeds", "-1")
    assert rc == 2 and "seed" in stderr and stderr.count("\n") == 1
    rc, _, stderr = run_cli(capsys, "export", "--model", tmp_path / "no-such-checkpoint", "--out", out)
    assert rc == 2 and "no-such-checkpoint" in stderr and "BPE" not in stderr
    rc, _, stderr = run_cli(capsys, "export", "--model", tiny_checkpoint, "--out", out, "--method", "nanogpt")
    assert rc == 2 and "invalid choice" in stderr


def test_cli_without_subcommand_unchanged(tiny_checkpoint, capsys):
    rc, stdout, stderr = run_cli(capsys, "--model", tiny_checkpoint, "--reference", "logits", "--max-new-tokens", "2",
                              "--num-return-sequences", "1")
    assert rc == 0, stderr
    assert stdout.startswith("verdict: AGREE")


def test_cli_export_precision_round_trip(tiny_checkpoint, tmp_path, ours, capsys):
    out = tmp_path / "ref"
    common = ["--model", tiny_checkpoint, "--prompt", "Hello there", "--max-new-tokens", "3",
              "--num-return-sequences", "2", "--layers"]
    rc, stdout, stderr = run_cli(capsys, "export", *common, "--out", out, "--precision", "bf16",
                              "--precision", "float16,bfloat16")
    assert rc == 0, stderr
    assert "HF's own error at bfloat16, float16" in stdout
    ref = load_reference(out)
    assert ref.precisions == ["bfloat16", "float16"]
    assert {"case0.own_error.bfloat16.logits", "case0.own_error.float16.hidden"} <= set(ref.tensors)
    rc, _, stderr = run_cli(capsys, "export", *common, "--out", tmp_path / "plain")
    assert rc == 0, stderr
    plain = load_reference(tmp_path / "plain")
    assert plain.id == ref.id and "precisions" not in plain.manifest
    for precision in ("bfloat16", "float16"):
        manifest, tensors = result_from_gpt(ours, ref, precision=precision)
        res = save_result(tmp_path / f"{precision}.safetensors", manifest, tensors)
        rc, stdout, stderr = run_cli(capsys, "check", "--reference", out, "--yours", res)
        assert rc == 0, stderr
        assert f"verdict: AGREE - consistent with {precision} precision" in stdout
        assert f"precision: {precision} (declared in the result's manifest); tolerance adds" in stdout
        assert "float32 re-check: not possible: a result file cannot be re-run in float32" in stdout
    for bad in ("int8", "auto"):
        rc, _, stderr = run_cli(capsys, "export", *common, "--out", tmp_path / "bad", "--precision", bad)
        assert rc == 2 and "export precision must be one of bfloat16" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()  # refused before anything was loaded or written
    rc, _, stderr = run_cli(capsys, "export", *common, "--out", tmp_path / "tf32", "--precision", "tf32")
    assert rc == 2 and stderr.splitlines()[-1].endswith("export it with HF's model on a CUDA device")
