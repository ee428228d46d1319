"""The pytest plugin (core/pytest_plugin.py) as a user's own test suite meets it, through pytester in this process:
the first run exports HF's golden reference, later runs judge offline against it, a broken model fails with a
readable message, --parity-regen exports again, and a golden reference for other cases is refused by name."""

pytest_plugins = ["pytester"]

# The user's test file: their model is our GPT loaded from the tiny checkpoint (a bug-lab fault when BROKEN=1);
# HF's model is named only by $HF_CKPT, so that a run without it proves it needs no HF model.
USER_TEST = '''
import os
from core import load_pretrained
from core.faults import apply_fault

def test_tiny_gpt(gpt2_parity):
    model = apply_fault(load_pretrained({ckpt!r}), os.environ.get("BROKEN") or None)
    gpt2_parity.check(model, hf=os.environ.get("HF_CKPT", "/no/hf/model/here"),
                      max_new_tokens=int(os.environ.get("NEW", "6")))
'''
# only this module, never an installed copy's entry point (if any) beside it
ARGS = ("-p", "no:gpt2_parity", "-p", "core.pytest_plugin", "-q", "-p", "no:cacheprovider")


def test_golden_reference_regen_pass_fail(pytester, monkeypatch, tiny_checkpoint):
    pytester.makepyfile(test_user=USER_TEST.format(ckpt=str(tiny_checkpoint)))
    golden = pytester.path / "parity_golden" / "test_tiny_gpt"

    monkeypatch.setenv("HF_CKPT", str(tiny_checkpoint))
    first = pytester.runpytest(*ARGS)
    first.assert_outcomes(passed=1)
    assert (golden / "manifest.json").is_file() and (golden / "reference.safetensors").is_file()
    first.stdout.fnmatch_lines(["*golden references written (commit them)*", f"*{golden}*"])

    monkeypatch.delenv("HF_CKPT")  # later runs: offline, from the committed folder only
    stamp = (golden / "reference.safetensors").stat().st_mtime_ns
    pytester.runpytest(*ARGS).assert_outcomes(passed=1)
    assert (golden / "reference.safetensors").stat().st_mtime_ns == stamp

    monkeypatch.setenv("BROKEN", "no_causal_mask")
    broken = pytester.runpytest(*ARGS)
    broken.assert_outcomes(failed=1)
    out = broken.stdout.str()
    assert "1 of 1 case(s) differ from HuggingFace's golden reference" in out
    assert "first diverging layer: block 0" in out and "cause: model" in out and "Traceback" not in out
    monkeypatch.delenv("BROKEN")

    monkeypatch.setenv("NEW", "7")  # the test now asks for other cases than the golden folder holds
    other = pytester.runpytest(*ARGS)
    other.assert_outcomes(failed=1)
    other.stdout.fnmatch_lines(["*exported for other prompts, seeds or settings*--parity-regen*"])

    monkeypatch.setenv("HF_CKPT", str(tiny_checkpoint))
    regen = pytester.runpytest(*ARGS, "--parity-regen")
    regen.assert_outcomes(passed=1)
    regen.stdout.fnmatch_lines(["*golden references written*"])
    assert (golden / "reference.safetensors").stat().st_mtime_ns != stamp


def test_without_golden_or_hf_the_failure_names_the_model(pytester, monkeypatch, tiny_checkpoint):
    pytester.makepyfile(test_user=USER_TEST.format(ckpt=str(tiny_checkpoint)))
    monkeypatch.delenv("HF_CKPT", raising=False)
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(failed=1)
    assert "/no/hf/model/here" in result.stdout.str()
