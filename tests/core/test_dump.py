"""The dump format: export HF's reference, a result written by another implementation, check it (API and CLI).

HF transformers is the independent reference throughout: the reference's numbers are HF's, and a result is
judged against them; the numpy example never imports torch.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from conftest import run_cli

from core.structured import random_gpt2
from core import compare, port_from_hf
from core.faults import apply_fault
from core.parity.dump import (
    FORMAT, METADATA_KEY, DumpError, Reference, compare_dump, export_reference, load_reference, load_result,
    make_cases, result_from_gpt, save_reference, save_result,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Hello, I'm a language model,"
SETTINGS = dict(num_return_sequences=2, max_new_tokens=6)


def _cases(tokenizer):
    """One prompt x two seeds, plus one greedy case."""
    cases = make_cases([PROMPT], tokenizer, [42, 7], **SETTINGS)
    cases += make_cases(["The quick brown fox"], tokenizer, [0], method="greedy", max_new_tokens=5)
    cases[-1].name = "case2"
    return cases


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory, tiny_checkpoint, tokenizer):
    """HF's reference for the tiny checkpoint, with layers: one prompt x two seeds, plus one greedy case."""
    from core.loader import load_hf_model

    hf = load_hf_model(tiny_checkpoint)
    cases = _cases(tokenizer)
    ref = export_reference(hf, cases, model="tiny", layers=True, tokenizer=tokenizer)
    out = tmp_path_factory.mktemp("ref")
    save_reference(ref, out)
    return out


@pytest.fixture(scope="module")
def ref(ref_dir):
    return load_reference(ref_dir)


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    from core.loader import load_hf_model

    return port_from_hf(load_hf_model(tiny_checkpoint))


@pytest.fixture(scope="module")
def good_result(tmp_path_factory, ref, ours):
    manifest, tensors = result_from_gpt(ours, ref)
    path = tmp_path_factory.mktemp("res") / "ours.safetensors"
    save_result(path, manifest, tensors)
    return path, manifest, tensors


def test_export_writes_what_the_spec_says(ref_dir, ref, tiny_hf):
    manifest = json.loads((ref_dir / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["version"] == 1 and manifest["layers"] is True
    # the tolerance as the spec states it: eps32 * sqrt(mlp_width), each row and position against its own scale
    assert manifest["tolerance"]["rtol"] == pytest.approx(2**-23 * (4 * 32) ** 0.5, rel=1e-12)
    assert "each (row, position) against its own scale" in manifest["tolerance"]["rule"]
    assert [c["name"] for c in manifest["cases"]] == ["case0", "case1", "case2"]
    template = json.loads((ref_dir / "result_template.json").read_text())
    assert template["manifest"]["reference_id"] == manifest["reference_id"]
    assert {"case0.tokens", "case0.logits", "case0.hidden", "case0.sampled"} <= set(template["tensors"])
    with safe_open(str(ref_dir / "reference.safetensors"), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    P = len(manifest["cases"][0]["prompt_ids"])
    assert shapes["case0.tokens"] == [2, P + 6]
    assert shapes["case0.logits"] == [2, 6, 50257]
    assert shapes["case0.hidden"] == [2 + 2, 2, P + 5, 32]
    # the streams are HF generate()'s, seeded as users do; the logits are HF's own at the positions that matter
    from conftest import hf_generate

    ids = manifest["cases"][0]["prompt_ids"]
    assert ref.tensors["case0.tokens"].tolist() == hf_generate(tiny_hf, ids, 42, do_sample=True, top_k=50,
                                                               num_return_sequences=2, max_new_tokens=6)
    tokens = ref.tensors["case0.tokens"]
    with torch.no_grad():
        out = tiny_hf(tokens[:, :-1], output_hidden_states=True)
    torch.testing.assert_close(ref.tensors["case0.logits"], out.logits[:, P - 1:], rtol=0, atol=1e-5)
    hidden = ref.tensors["case0.hidden"]  # [embeddings, block 0, block 1, ln_f]; HF's list ends with ln_f's output
    for mine, hfs in ((0, 0), (1, 1), (3, 2)):
        torch.testing.assert_close(hidden[mine], out.hidden_states[hfs], rtol=0, atol=1e-5)


def test_round_trip_our_model_is_identical(ref_dir, good_result, tokenizer):
    path, _, _ = good_result
    check = compare_dump(ref_dir, path, tokenizer=tokenizer)
    assert check.agree
    assert [r.verdict_kind for r in check.reports] == ["identical"] * 3
    for r in check.reports:
        assert r.first_diverging_layer is None and [l.name for l in r.layers][-1] == "lm_head"
        assert len(r.layers) == 2 + 2 + 1 and not any(l.exceeds for l in r.layers)
        assert all(row.identical for row in r.rows)


def test_same_verdicts_as_compare(ref, ours, tiny_hf, tokenizer, tmp_path):
    """A fault in our model: check on its result flags the very layer compare() flags."""
    s = ref.cases[0].settings
    for fault in ("c_proj_not_transposed", "no_position_embeddings", "untied_lm_head"):
        live = compare((ours, tiny_hf), PROMPT, tokenizer=tokenizer, reference="logits", fault=fault, **{
            k: s[k] for k in ("num_return_sequences", "max_new_tokens", "seed")})
        manifest, tensors = result_from_gpt(apply_fault(ours, fault), ref, sampled=False)
        check = compare_dump(ref, save_result(tmp_path / f"{fault}.safetensors", manifest, tensors),
                             tokenizer=tokenizer)
        dumped = check.reports[0]
        assert not check.agree
        assert dumped.verdict_kind == live.verdict_kind == "model"
        assert dumped.first_diverging_layer == live.first_diverging_layer, fault
        # the result's optional caseN.resid_mid gives the sub-layer compare() finds (blocks on HF's input and the
        # mistake's name need the model itself)
        assert dumped.first_diverging_sublayer == live.first_diverging_sublayer, fault
        assert (dumped.first_diverging_sublayer == "block 0 attention") == (fault == "c_proj_not_transposed")
        assert dumped.diverging_blocks == [] and dumped.diagnosis == []
        assert dumped.localisation.startswith("inside the blocks only")


def test_sampled_rows_explained(ref, ours, tokenizer, tmp_path):
    """Sampled ids from a sampler with its own random numbers: valid draws are 'different random draws', tokens
    the settings never sample are the sampler's fault; the greedy case must match HF exactly."""
    from core import generate

    manifest, tensors = result_from_gpt(ours, ref)
    manifest["sampler"] = "other"
    for i, case in enumerate(ref.cases[:2]):  # valid draws from the same distribution, other random numbers
        gen = generate(ours, case.prompt_ids, record=False, **{**case.settings, "seed": 1000 + i})
        tensors[f"{case.name}.sampled"] = torch.tensor(gen.sequences)
    check = compare_dump(ref, save_result(tmp_path / "r.safetensors", manifest, tensors), tokenizer=tokenizer)
    r0 = check.reports[0]
    assert check.agree and r0.verdict_kind == "sampling_order" and r0.sampler == "yours"
    assert {row.cause for row in r0.rows} == {"sampling_order"}
    assert check.reports[2].verdict_kind == "identical"  # greedy: their argmax equals HF's

    P = len(ref.cases[0].prompt_ids)
    t = tensors["case0.sampled"].clone()
    logits = tensors["case0.logits"][0, 0]
    t[0, P] = int(logits.argsort()[100])  # rank ~50000: never inside top-k 50
    tensors["case0.sampled"] = t
    check = compare_dump(ref, save_result(tmp_path / "r2.safetensors", manifest, tensors), tokenizer=tokenizer)
    r0 = check.reports[0]
    assert not check.agree and r0.verdict_kind == "sampler"
    assert r0.rows[0].cause == "sampler" and r0.rows[0].first_divergent_step == 0
    assert "never sample" in r0.rows[0].explanation


def _numpy_example(*args):
    """Run examples/numpy_gpt2.py with torch made unimportable (it must not need it)."""
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['numpy_gpt2.py'] + sys.argv[1:]; "
            "runpy.run_path('examples/numpy_gpt2.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_example_is_identical(ref_dir, tiny_checkpoint, tokenizer, tmp_path, dtype):
    out = tmp_path / "np.safetensors"
    _numpy_example("--checkpoint", tiny_checkpoint, "--reference", ref_dir, "--out", out, "--dtype", dtype)
    check = compare_dump(ref_dir, out, tokenizer=tokenizer)
    assert check.agree, [r.verdict for r in check.reports]
    assert [r.verdict_kind for r in check.reports] == ["sampling_order", "sampling_order", "identical"]
    for r in check.reports:
        assert r.max_abs_dlogit < 0.5 * r.layers[-1].tolerance  # float noise, well inside the tolerance
        assert r.max_abs_dlogit > 0  # a genuinely separate computation, not HF's numbers copied back


@pytest.mark.parametrize("mistake,layer", [("ln_eps", "block 0"), ("last_block_no_scale", "block 1"),
                                           ("gelu_relu", "block 0")])
def test_numpy_mistake_flagged_at_its_layer(ref_dir, tiny_checkpoint, tokenizer, tmp_path, mistake, layer):
    out = tmp_path / "np.safetensors"
    _numpy_example("--checkpoint", tiny_checkpoint, "--reference", ref_dir, "--out", out, "--mistake", mistake,
                   "--no-sampling")
    check = compare_dump(ref_dir, out, tokenizer=tokenizer)
    assert not check.agree
    assert {r.first_diverging_layer for r in check.reports} == {layer}
    assert all(r.verdict_kind == "model" for r in check.reports)


# ---------------------------------------------------------------------------------------------------------
# Bad input: each a specific message, nothing loaded or executed


def _write(tmp_path, manifest, tensors, name="bad.safetensors"):
    return save_result(tmp_path / name, manifest, tensors)


def _expect(ref, path, match, **kw):
    with pytest.raises(DumpError, match=match):
        load_result(path, ref, **kw)


def test_bad_files(ref, good_result, tmp_path):
    path, manifest, tensors = good_result
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not tensors, just text that happens to be long enough")
    _expect(ref, text, "not a safetensors file")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    _expect(ref, tiny, "shorter than its 8-byte header")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    _expect(ref, cut, "truncated")
    _expect(ref, path, "limit is", max_bytes=1 << 20)
    _expect(ref, tmp_path / "missing.safetensors", "no result file")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "nometa.safetensors"))
    _expect(ref, tmp_path / "nometa.safetensors", "has no manifest")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "badjson.safetensors"), metadata={METADATA_KEY: "{not json"})
    _expect(ref, tmp_path / "badjson.safetensors", "not valid JSON")


def test_bad_manifests(ref, good_result, tmp_path):
    _, manifest, tensors = good_result
    _expect(ref, _write(tmp_path, {**manifest, "version": 2}, tensors), "format version 2")
    _expect(ref, _write(tmp_path, {**manifest, "format": "llm.c-state"}, tensors), "not a gpt2-parity-dump")
    _expect(ref, _write(tmp_path, {**manifest, "kind": "reference"}, tensors), "where a 'result' was expected")
    _expect(ref, _write(tmp_path, {**manifest, "model": "distilgpt2"}, tensors), "for model 'distilgpt2'")
    other = json.loads(json.dumps(manifest))
    other["reference_id"] = "0" * 16
    other["cases"][0]["settings"]["seed"] = 3
    _expect(ref, _write(tmp_path, other, tensors), "other prompts or settings")
    _expect(ref, _write(tmp_path, {**manifest, "sampler": "python"}, tensors), "'sampler' must be")
    # a separate manifest file wins over the metadata
    side = tmp_path / "manifest.json"
    side.write_text(json.dumps({**manifest, "version": 0}))
    _expect(ref, _write(tmp_path, manifest, tensors), "format version 0", manifest_path=side)


def test_bad_tensors(ref, good_result, tmp_path):
    _, manifest, tensors = good_result
    drop = {k: v for k, v in tensors.items() if k != "case1.logits"}
    _expect(ref, _write(tmp_path, manifest, drop), "lacks tensor case1.logits")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.logit": tensors["case0.logits"].clone()}),
            "unexpected tensor 'case0.logit'")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.logits": tensors["case0.logits"][..., :-1]}),
            r"case0.logits' has shape \[2, 6, 50256\]; expected \[2, 6, 50257\]")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.hidden": tensors["case0.hidden"][1:]}),
            "case0.hidden' has shape")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.logits": tensors["case0.logits"][0]}),
            "expected 3 dimensions")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.logits": tensors["case0.logits"].to(torch.int32)}),
            "dtype I32; expected one of F64, F32, F16, BF16")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.tokens": tensors["case0.tokens"].float()}),
            "dtype F32; expected one of I64, I32")
    nan = tensors["case1.hidden"].clone()
    nan[3, 1, 2, 5] = float("nan")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case1.hidden": nan}), "case1.hidden' has 1 NaN/Inf")
    inf = tensors["case0.logits"].clone()
    inf[0, 0, 0] = float("inf")
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.logits": inf}), "NaN/Inf")
    wrong = tensors["case0.tokens"].clone()
    wrong[1, -2] = (wrong[1, -2] + 1) % 50257
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.tokens": wrong}),
            "tokens do not match the reference's: first at row 1")
    bad_ids = tensors["case0.sampled"].clone()
    bad_ids[0, -1] = 60000
    _expect(ref, _write(tmp_path, manifest, {**tensors, "case0.sampled": bad_ids}), "outside")


def test_reference_dir_errors(tmp_path, good_result):
    path, _, _ = good_result
    with pytest.raises(DumpError, match="no reference at"):
        load_reference(tmp_path)
    with pytest.raises(DumpError, match="where a 'reference' was expected"):
        load_reference(path)  # a result given as the reference


# ---------------------------------------------------------------------------------------------------------
# The command line in-process (its own tests: tests/cli/test_dump_cli.py)


# ---------------------------------------------------------------------------------------------------------
# A result written from the spec alone: the file by hand (8-byte length, JSON header, raw bytes), the manifest
# from the reference's manifest.json as docs/dump-format.md's table says, the logits from HF in float64


def _hand_written(path, tensors: dict, manifest: dict | None, metadata: dict | None = None) -> Path:
    """A safetensors file as the spec describes it, written without the safetensors library or core.parity."""
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.float16: "F16",
             torch.bfloat16: "BF16"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        # numpy has no bfloat16: its 2 bytes per value are written as they are, little-endian, like an int16's
        arr = (t.contiguous().view(torch.int16) if t.dtype == torch.bfloat16 else t.contiguous()).numpy()
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    meta = dict(metadata or {})
    if manifest is not None:
        meta["gpt2_parity_dump"] = json.dumps(manifest)
    if meta:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the header may end in spaces; this keeps the data 8-byte aligned
    Path(path).write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    return Path(path)


def _spec_manifest(ref_dir) -> dict:
    """The result manifest of the spec's table: four keys copied from the reference, unchanged."""
    m = json.loads((ref_dir / "manifest.json").read_text())
    return {"format": "gpt2-parity-dump", "version": 1, "kind": "result", "reference_id": m["reference_id"],
            "model": m["model"], "layers": m["layers"], "cases": m["cases"],
            "implementation": {"name": "HF in float64", "framework": "torch", "dtype": "float64", "notes": ""},
            "sampler": "other"}


@pytest.fixture(scope="module")
def spec_tensors(ref_dir, tiny_hf):
    """Each case's tokens (read from reference.safetensors) and logits at positions P-1..T-2, from HF in float64."""
    import copy

    hf64 = copy.deepcopy(tiny_hf).double()
    m = json.loads((ref_dir / "manifest.json").read_text())
    tensors = {}
    with safe_open(str(ref_dir / "reference.safetensors"), framework="pt") as f:
        for case in m["cases"]:
            tokens = f.get_tensor(case["name"] + ".tokens")
            P = len(case["prompt_ids"])
            with torch.no_grad():
                logits = hf64(tokens[:, :-1]).logits[:, P - 1:]
            tensors[case["name"] + ".tokens"] = tokens
            tensors[case["name"] + ".logits"] = logits.float()
    return tensors


def test_result_written_from_the_spec_agrees(ref_dir, spec_tensors, tmp_path, capsys):
    manifest = _spec_manifest(ref_dir)
    assert isinstance(manifest["model"], dict) and set(manifest["model"]) == {"id", "config"}
    rc, out, err = run_cli(capsys, "check", "--reference", ref_dir, "--yours",
                        _hand_written(tmp_path / "spec.safetensors", spec_tensors, manifest))
    assert rc == 0, err
    assert "3 of 3 case(s) agree" in out
    # the bare model id, which earlier writers wrote, is still read
    rc, out, err = run_cli(capsys, "check", "--reference", ref_dir, "--yours", _hand_written(
        tmp_path / "id.safetensors", spec_tensors, {**manifest, "model": manifest["model"]["id"]}))
    assert rc == 0, err
    # result_template.json holds what the spec says to copy, so a writer copying it writes the same manifest
    template = json.loads((ref_dir / "result_template.json").read_text())["manifest"]
    for key in ("reference_id", "model", "layers", "cases"):
        assert template[key] == manifest[key], key


def _changed(manifest: dict, path: str, value) -> dict:
    """A deep copy of `manifest` with the key at a dotted path (list indices as numbers) set to `value`."""
    out = json.loads(json.dumps(manifest))
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = out
    for k in parents:
        node = node[k]
    node[last] = value
    return out


@pytest.mark.parametrize("path,value,match", [
    ("reference_id", "0123456789abcdef", "their reference_ids differ"),
    ("cases.1.settings.seed", 8, "case1.settings.seed is 8, the reference's is 7"),
    ("cases.0.settings.top_k", 40, "case0.settings.top_k is 40, the reference's is 50"),
    ("cases.2.settings.max_new_tokens", 4, "case2.settings.max_new_tokens is 4, the reference's is 5"),
    ("cases.0.prompt_ids.0", 17, r"case0.prompt_ids are \[17, "),
    ("cases.2.prompt", "The slow brown fox", "case2.prompt is 'The slow brown fox'"),
    ("model.id", "gpt2", "this result is for model 'gpt2'; the reference is for 'tiny'"),
    ("model", "distilgpt2", "this result is for model 'distilgpt2'"),
    ("model.config.n_layer", 12, "model.config.n_layer is 12, the reference's is 2"),
    ("layers", False, "says layers: false; the reference's says true"),
])
def test_result_for_something_else_is_refused(ref_dir, spec_tensors, tmp_path, capsys, path, value, match):
    """Made for another reference, model, prompt or settings: exit 2 naming what differs, whatever else matches."""
    manifest = _changed(_spec_manifest(ref_dir), path, value)
    res = _hand_written(tmp_path / "other.safetensors", spec_tensors, manifest)
    rc, out, err = run_cli(capsys, "check", "--reference", ref_dir, "--yours", res)
    assert rc == 2 and out == "" and err.count("\n") == 1, (rc, out, err)
    assert re.search(match, err), err


def test_result_missing_cases_is_refused(ref_dir, spec_tensors, tmp_path, capsys):
    manifest = _spec_manifest(ref_dir)
    manifest["cases"] = manifest["cases"][:2]
    tensors = {k: v for k, v in spec_tensors.items() if not k.startswith("case2.")}
    rc, out, err = run_cli(capsys, "check", "--reference", ref_dir, "--yours",
                        _hand_written(tmp_path / "two.safetensors", tensors, manifest))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "covers 2 case(s), the reference 3: case2 is missing" in err


def test_result_must_name_itself_and_copy_layers(ref, ref_dir, spec_tensors, tmp_path, tokenizer):
    """The spec's `implementation` ("fill in") and `layers` (copied; caseN.hidden only against a reference that
    has it) are enforced."""
    manifest = _spec_manifest(ref_dir)
    for impl in (None, {}, {"name": ""}, {"name": "  ", "framework": "numpy"}, "my port"):
        m = {**manifest, "implementation": impl} if impl is not None else {
            k: v for k, v in manifest.items() if k != "implementation"}
        _expect(ref, _hand_written(tmp_path / "anon.safetensors", spec_tensors, m), "'implementation' must name")
    _expect(ref, _hand_written(tmp_path / "dtype.safetensors", spec_tensors, _changed(
        manifest, "implementation.dtype", 32)), "implementation.dtype must be a string")
    # result_template.json's manifest as it comes, before 'implementation' is filled in
    template = json.loads((ref_dir / "result_template.json").read_text())["manifest"]
    _expect(ref, _hand_written(tmp_path / "template.safetensors", spec_tensors, template), "'implementation' must")
    for layers in (None, "yes", 1):
        _expect(ref, _hand_written(tmp_path / "layers.safetensors", spec_tensors, {**manifest, "layers": layers}),
                "'layers' must be true or false")
    # a reference without layers: its result may not carry caseN.hidden (nothing to compare it with)
    no_layers = Reference({**ref.manifest, "layers": False},
                          {k: v for k, v in ref.tensors.items() if not k.endswith(".hidden")})
    hidden = {**spec_tensors, "case0.hidden": ref.tensors["case0.hidden"]}
    with pytest.raises(DumpError, match="holds case0.hidden, but its reference has no hidden states"):
        load_result(_hand_written(tmp_path / "h.safetensors", hidden, {**manifest, "layers": False}), no_layers)
    assert "case0.hidden" not in no_layers.result_template()["tensors"]
    load_result(_hand_written(tmp_path / "ok.safetensors", spec_tensors, {**manifest, "layers": False}), no_layers)


def test_header_over_the_limit_is_named_as_such(ref, tmp_path):
    """A well-formed header over the 4 MiB limit is refused as too large, not as a broken file; garbage whose
    first 8 bytes announce as much is not a safetensors file."""
    big = _hand_written(tmp_path / "big.safetensors", {"x": torch.zeros(2)}, None, metadata={"pad": "x" * (5 << 20)})
    from safetensors.torch import load_file

    assert load_file(str(big))["x"].tolist() == [0.0, 0.0]  # a valid safetensors file
    with pytest.raises(DumpError, match=r"header is 5\.0 MiB, over the limit of 4 MiB") as exc:
        load_result(big, ref)
    assert "truncated" not in str(exc.value) and "not a safetensors" not in str(exc.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes((5 << 20).to_bytes(8, "little") + b"\x00" * (6 << 20))
    _expect(ref, junk, "not a safetensors file")


def test_check_json_reports_bad_input_as_json(ref_dir, spec_tensors, tmp_path, capsys):
    """Every exit-2 path of `check --json` prints one JSON object {"error", "kind"} on stdout."""
    good = _hand_written(tmp_path / "good.safetensors", spec_tensors, _spec_manifest(ref_dir))
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not tensors, just text that happens to be long enough")
    partial = _spec_manifest(ref_dir)
    partial["cases"] = partial["cases"][:1]
    one = _hand_written(tmp_path / "one.safetensors", {k: v for k, v in spec_tensors.items() if k.startswith(
        "case0.")}, partial)
    bad_tok = tmp_path / "bad-tokenizer"
    bad_tok.mkdir()
    (bad_tok / "vocab.json").write_text("{not json")
    (bad_tok / "merges.txt").write_text("x")
    paths = [
        (["--reference", ref_dir], "usage", "--yours"),
        (["--reference", ref_dir, "--yours", good, "--bogus"], "usage", "--bogus"),
        (["--reference", tmp_path / "nowhere", "--yours", good], "reference", "no reference at"),
        (["--reference", good, "--yours", good], "reference", "where a 'reference' was expected"),
        (["--reference", ref_dir, "--yours", tmp_path / "missing.safetensors"], "result", "no result file"),
        (["--reference", ref_dir, "--yours", text], "result", "not a safetensors file"),
        (["--reference", ref_dir, "--yours", one], "result", "case1, case2 are missing"),
        (["--reference", ref_dir, "--yours", good, "--manifest", tmp_path / "none.json"], "result", "manifest file"),
        (["--reference", ref_dir, "--yours", good, "--tokenizer", bad_tok], "tokenizer", "not usable GPT-2 BPE"),
    ]
    for args, kind, match in paths:
        rc, out, err = run_cli(capsys, "check", "--json", *args)
        assert rc == 2 and out.count("\n") == 1, (args, rc, out, err)
        data = json.loads(out)
        assert set(data) == {"error", "kind"} and data["kind"] == kind and match in data["error"], (args, data)
        assert err.count("\n") == 1 and data["error"] in err  # the same one line on stderr, as without --json
    rc, out, _ = run_cli(capsys, "check", "--json", "--reference", ref_dir, "--yours", good)
    assert rc == 0 and json.loads(out)["agree"] is True


# ---------------------------------------------------------------------------------------------------------
# Results below float32: judged against HF's own error at their precision, exported with the reference


@pytest.fixture(scope="module")
def prec_ref_dir(tmp_path_factory, tiny_checkpoint, tokenizer):
    """ref_dir's very cases, exported again with HF's own error at bfloat16 and float16."""
    from core.loader import load_hf_model

    hf = load_hf_model(tiny_checkpoint)
    cases = _cases(tokenizer)
    ref = export_reference(hf, cases, model="tiny", layers=True, tokenizer=tokenizer,
                           precisions=("bfloat16", "fp16"))
    out = tmp_path_factory.mktemp("prec-ref")
    save_reference(ref, out)
    return out


@pytest.fixture(scope="module")
def prec_ref(prec_ref_dir):
    return load_reference(prec_ref_dir)


def test_export_with_precisions_stores_hfs_own_error(prec_ref, ref, tiny_hf):
    """HF's own error, recomputed here from HF cast to each dtype against HF in float32 on the reference's streams;
    everything else (and the reference_id) as in the reference exported without precisions."""
    import copy

    assert prec_ref.manifest["precisions"] == ["bfloat16", "float16"] and "precisions" not in ref.manifest
    assert prec_ref.id == ref.id  # a result made for one is a result for the other
    assert not any(".own_error." in k for k in ref.tensors)
    for k, v in ref.tensors.items():
        assert torch.equal(prec_ref.tensors[k], v), k
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        low = copy.deepcopy(tiny_hf).to(dtype)
        for case in prec_ref.cases:
            tokens = prec_ref.tensors[f"{case.name}.tokens"]
            P = len(case.prompt_ids)
            with torch.no_grad():
                o32 = tiny_hf(tokens[:, :-1], output_hidden_states=True)
                o16 = low(tokens[:, :-1], output_hidden_states=True)
            own = (o16.logits[:, P - 1:].float() - o32.logits[:, P - 1:]).abs().amax(dim=-1)
            stored = prec_ref.tensors[f"{case.name}.own_error.{name}.logits"]
            assert stored.shape == own.shape == (tokens.size(0), tokens.size(1) - P)
            torch.testing.assert_close(stored, own, rtol=1e-5, atol=1e-6)
            assert own.min() > 0  # a genuine rounding error, not a copy of the float32 logits
            hidden = prec_ref.tensors[f"{case.name}.own_error.{name}.hidden"]  # [embeddings, block 0, block 1, ln_f]
            assert hidden.shape == (2 + 2, tokens.size(0), tokens.size(1) - 1)
            for mine, hfs in ((0, 0), (1, 1), (3, 2)):
                want = (o16.hidden_states[hfs].float() - o32.hidden_states[hfs]).abs().amax(dim=-1)
                torch.testing.assert_close(hidden[mine], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_correct_result_below_float32_is_consistent_with_its_precision(prec_ref, ours, tokenizer, tmp_path,
                                                                         precision):
    manifest, tensors = result_from_gpt(ours, prec_ref, precision=precision)
    assert tensors["case0.logits"].dtype == getattr(torch, precision)  # the file really holds BF16 / F16
    assert manifest["precision"] == precision
    for declared in (True, False):
        m = manifest if declared else {k: v for k, v in manifest.items() if k != "precision"}
        check = compare_dump(prec_ref, save_result(tmp_path / f"{declared}.safetensors", m, tensors),
                             tokenizer=tokenizer)
        assert check.agree, [r.verdict for r in check.reports]
        for r in check.reports:
            assert r.verdict.startswith(f"consistent with {precision} precision"), r.verdict
            assert r.precision["name"] == precision and r.precision["factor"] is not None
            assert r.precision["how"] == ("declared in the result's manifest" if declared else
                                          f"detected: your logits are stored as {precision}")
            assert r.first_diverging_layer is None and not any(l.exceeds for l in r.layers)
            assert all(l.hf_own_error is not None for l in r.layers)
            # nothing re-runs a file in float32: the verdict says what its precision could hide
            assert r.float32_check["possible"] is False
            assert "a result file cannot be re-run in float32" in r.float32_check["why_not"]
            assert f"a fault smaller than {precision}'s resolution cannot be excluded" in r.verdict
        # the same file by the float32 rule would differ: the precision's yardstick is what makes it agree
        assert max(r.max_abs_dlogit / r.layers[-1].tolerance for r in check.reports) > 0.05
    as_float32 = {**manifest, "precision": "float32"}
    float32_rule = compare_dump(prec_ref, save_result(tmp_path / "f32.safetensors", as_float32, tensors),
                                tokenizer=tokenizer)
    assert not float32_rule.agree


def test_a_fault_visible_at_the_precision_is_flagged_at_its_layer(prec_ref_dir, prec_ref, ours, tmp_path, capsys):
    bad = save_result(tmp_path / "bad.safetensors",
                      *result_from_gpt(apply_fault(ours, "c_proj_not_transposed@0"), prec_ref, precision="bfloat16",
                                       sampled=False))
    rc, out, err = run_cli(capsys, "check", "--reference", prec_ref_dir, "--yours", bad, "--json")
    assert rc == 1, err
    data = json.loads(out)
    assert {c["first_diverging_layer"] for c in data["cases"]} == {"block 0"}
    assert all(c["verdict"].startswith("differs beyond bfloat16 precision") for c in data["cases"])


def test_a_result_below_float32_needs_hfs_own_error_at_its_precision(ref_dir, prec_ref_dir, ref, ours, tmp_path,
                                                                      capsys):
    """Never judged by the float32 rule in silence: exit 2, saying how to export what is missing."""
    manifest, tensors = result_from_gpt(ours, ref, precision="bfloat16")
    bf16 = save_result(tmp_path / "bf16.safetensors", {k: v for k, v in manifest.items() if k != "precision"}, tensors)
    rc, out, err = run_cli(capsys, "check", "--reference", ref_dir, "--yours", bf16)
    assert rc == 2 and out == "" and err.count("\n") == 1, (rc, out, err)
    assert "detected: your logits are stored as bfloat16" in err and "--precision bfloat16" in err
    assert "at no precision below float32" in err
    # the same file against the reference exported with that precision (same reference_id): judged
    rc, out, err = run_cli(capsys, "check", "--reference", prec_ref_dir, "--yours", bf16)
    assert rc == 0 and "consistent with bfloat16 precision" in out, err
    # a precision the reference lacks, among others it has
    auto = save_result(tmp_path / "autocast.safetensors",
                       *result_from_gpt(ours, ref, precision="bfloat16-autocast", sampled=False))
    rc, out, err = run_cli(capsys, "check", "--json", "--reference", prec_ref_dir, "--yours", auto)
    assert rc == 2 and json.loads(out)["kind"] == "result"
    assert "only at bfloat16, float16" in err and "--precision bfloat16-autocast" in err


def test_declared_float32_with_bf16_logits_is_judged_by_float32_and_says_so(prec_ref, ours, tokenizer, tmp_path):
    manifest, tensors = result_from_gpt(ours, prec_ref, precision="bfloat16", sampled=False)
    check = compare_dump(prec_ref, save_result(tmp_path / "f32.safetensors", {**manifest, "precision": "float32"},
                                               tensors), tokenizer=tokenizer)
    for r in check.reports:
        assert r.precision["name"] == "float32" and r.precision["factor"] is None  # the float32 rule
        assert all(l.hf_own_error is None for l in r.layers)
        assert ("although float32 was declared in the result's manifest: your logits are stored as bfloat16"
                in r.verdict), r.verdict
        assert any('declare "precision": "bfloat16"' in n for n in r.notes), r.notes
    assert not check.agree


def test_result_precision_bad_input(prec_ref, good_result, tmp_path):
    _, manifest, tensors = good_result
    _expect(prec_ref, _write(tmp_path, {**manifest, "precision": "int8"}, tensors), "'precision' must be one of")
    mixed = {**tensors, "case1.logits": tensors["case1.logits"].to(torch.bfloat16)}
    _expect(prec_ref, _write(tmp_path, manifest, mixed), r"stored in dtypes of different precisions \(case0 F32, "
                                                         r"case1 BF16, case2 F32\): declare")
    load_result(_write(tmp_path, {**manifest, "precision": "bfloat16"}, mixed), prec_ref)  # declared: fine
    own = {**tensors, "case0.own_error.bfloat16.logits": prec_ref.tensors["case0.own_error.bfloat16.logits"]}
    _expect(prec_ref, _write(tmp_path, manifest, own), "unexpected tensor 'case0.own_error.bfloat16.logits'")


def test_reference_precisions_are_checked(prec_ref, tmp_path):
    def saved(manifest, tensors):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        save_reference(Reference(manifest, tensors), out)
        return out

    m, t = prec_ref.manifest, prec_ref.tensors
    with pytest.raises(DumpError, match="'precisions' must list distinct names"):
        load_reference(saved({**m, "precisions": ["int8"]}, t))
    with pytest.raises(DumpError, match="lacks tensor case1.own_error.float16.hidden"):
        load_reference(saved(m, {k: v for k, v in t.items() if k != "case1.own_error.float16.hidden"}))
    with pytest.raises(DumpError, match=r"unexpected tensor 'case0.own_error.float16.(hidden|logits)' in the refer"):
        load_reference(saved({**m, "precisions": ["bfloat16"]}, t))
    own = t["case0.own_error.bfloat16.logits"]
    with pytest.raises(DumpError, match=r"case0.own_error.bfloat16.logits' has shape \[2, 5\]; expected \[2, 6\]"):
        load_reference(saved(m, {**t, "case0.own_error.bfloat16.logits": own[:, 1:].contiguous()}))
    with pytest.raises(DumpError, match="case0.own_error.bfloat16.logits holds negative values"):
        load_reference(saved(m, {**t, "case0.own_error.bfloat16.logits": -own}))


@pytest.mark.parametrize("mistake,agree", [("none", True), ("no_mask", False)])
def test_bf16_result_written_by_hand_from_an_independent_model(prec_ref_dir, tiny_hf, tmp_path, capsys, mistake,
                                                              agree):
    """examples/my_gpt2.py cast to bfloat16, its tensors taken by hand (hooks on its own modules), the file written
    from the spec alone with BF16 logits and residual stream and no "precision" key: the dtype says bfloat16."""
    from examples.my_gpt2 import from_hf_state_dict

    model = from_hf_state_dict(tiny_hf.state_dict(), tiny_hf.config, mistake).to(torch.bfloat16)
    manifest = _spec_manifest(prec_ref_dir)
    manifest["implementation"] = {"name": "my_gpt2 in bfloat16", "dtype": "bfloat16"}
    tensors = {}
    with safe_open(str(prec_ref_dir / "reference.safetensors"), framework="pt") as f:
        for case in manifest["cases"]:
            tokens = f.get_tensor(case["name"] + ".tokens")
            P = len(case["prompt_ids"])
            stream = []
            hooks = [model.decoder.blocks[0].register_forward_pre_hook(lambda m, args: stream.append(args[0]))]
            hooks += [m.register_forward_hook(lambda m, args, out: stream.append(out))
                      for m in (*model.decoder.blocks, model.decoder.norm)]
            with torch.no_grad():
                logits, _ = model(tokens[:, :-1])
            for h in hooks:
                h.remove()
            assert logits.dtype == torch.bfloat16 and {h.dtype for h in stream} == {torch.bfloat16}
            tensors[case["name"] + ".tokens"] = tokens
            tensors[case["name"] + ".logits"] = logits[:, P - 1:]
            tensors[case["name"] + ".hidden"] = torch.stack(stream)  # [embeddings, block 0, block 1, ln_f]
    res = _hand_written(tmp_path / "my_gpt2_bf16.safetensors", tensors, manifest)
    rc, out, err = run_cli(capsys, "check", "--reference", prec_ref_dir, "--yours", res, "--json")
    assert rc == (0 if agree else 1), err
    for case in json.loads(out)["cases"]:
        assert case["precision"]["name"] == "bfloat16"
        assert case["precision"]["how"] == "detected: your logits are stored as bfloat16"
        if agree:
            assert case["verdict"].startswith("consistent with bfloat16 precision"), case["verdict"]
        else:
            assert case["first_diverging_layer"] == "block 0" and case["verdict_kind"] == "model"


# ---------------------------------------------------------------------------------------------------------
# Rows that end early: HF pads them with eos, and a result is computed on those very streams


@pytest.fixture(scope="module")
def eos_setup(tmp_path_factory, tokenizer):
    """A tiny random GPT-2 whose final LayerNorm bias points at eos's embedding (tied head), so that eos is often
    sampled: case0's rows end at different steps. Its checkpoint and HF's reference, without layers."""
    from conftest import TINY

    hf = random_gpt2(seed=0, **TINY)
    with torch.no_grad():
        e = hf.transformer.wte.weight[50256]
        hf.transformer.ln_f.bias.add_(10.0 * e / e.dot(e))  # eos's logit +10
    ckpt = tmp_path_factory.mktemp("eos-gpt2")
    hf.save_pretrained(ckpt)
    cases = make_cases([PROMPT], tokenizer, [0], num_return_sequences=3, max_new_tokens=8)
    ref = export_reference(hf, cases, model="tiny-eos", layers=False, tokenizer=tokenizer)
    out = tmp_path_factory.mktemp("eos-ref")
    save_reference(ref, out)
    return hf, ckpt, out


def test_rows_ending_early_with_eos(eos_setup, tokenizer, tmp_path):
    from conftest import hf_generate

    hf, ckpt, ref_dir = eos_setup
    ref = load_reference(ref_dir)
    ids = ref.cases[0].prompt_ids
    P, eos = len(ids), 50256
    tokens = ref.tensors["case0.tokens"]
    # the reference holds HF generate()'s rows, padded with eos after a row's first eos
    assert tokens.tolist() == hf_generate(hf, ids, 0, do_sample=True, top_k=50, num_return_sequences=3,
                                          max_new_tokens=8, pad_token_id=eos)
    new = tokens[:, P:].tolist()
    ends = [row.index(eos) if eos in row else None for row in new]
    assert any(e is not None and e < len(row) - 1 for e, row in zip(ends, new)), new  # a row ends early...
    assert None in ends, new  # ...while another runs to the end, so the stream is padded
    for row, end in zip(new, ends):
        if end is not None:
            assert set(row[end:]) == {eos}
    # HF's logits there are those of the eos-padded stream, fed as it is (no attention mask)
    with torch.no_grad():
        torch.testing.assert_close(ref.tensors["case0.logits"], hf(tokens[:, :-1]).logits[:, P - 1:],
                                   rtol=0, atol=1e-5)
    # an independent port run on the same padded streams agrees; its own sampled rows pad with eos too
    out = tmp_path / "np.safetensors"
    _numpy_example("--checkpoint", ckpt, "--reference", ref_dir, "--out", out)
    check = compare_dump(ref_dir, out, tokenizer=tokenizer)
    assert check.agree, check.reports[0].verdict
    report = check.reports[0]
    for r, end in enumerate(ends):  # per-step views stop at the step that chose eos
        judged = [k for k, step in enumerate(report.steps) if step[r] is not None]
        assert judged == list(range(len(new[r]) if end is None else end + 1)), (r, judged)
    # the positions after eos still count in the logits' comparison: a result must write what its model
    # computes there, not zeros or a copy of the eos step
    with safe_open(str(out), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    r, end = next((r, e) for r, e in enumerate(ends) if e is not None and e < len(new[r]) - 1)
    tensors["case0.logits"][r, end + 1:] = tensors["case0.logits"][r, end]
    manifest = json.loads((ref_dir / "result_template.json").read_text())["manifest"]
    manifest["implementation"] = {"name": "eos steps copied"}
    check = compare_dump(ref_dir, _hand_written(tmp_path / "copied.safetensors", tensors, manifest),
                         tokenizer=tokenizer)
    assert not check.agree and check.reports[0].verdict_kind == "model"
