"""The dashboard's "Check a result file" panel, its handlers in-process: a result file shows every view, a mistake
shows at its layer, bad uploads are refused with a clear message, and results below float32 are judged at their
precision. The same panel through gradio_client: tests/app/test_client.py; in a browser: tests/browser/test_browser.py.
The dump format itself: tests/core/test_dump.py."""

import json

import pytest
from safetensors.torch import save_file

from core.faults import apply_fault
from core.parity.dump import result_from_gpt, save_result


def _write(tmp_path, manifest, tensors, name="bad.safetensors"):
    return save_result(tmp_path / name, manifest, tensors)


@pytest.fixture
def upload_dir(tmp_path, monkeypatch):
    """Gradio's upload folder, in a tmp dir: the only place the panel reads files from."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def panel_env(bpe_dir):
    from demo import upload
    from demo.handlers import OUTPUT_KEYS
    from demo.models import ModelCache

    cache = ModelCache(bpe_dir=str(bpe_dir))
    refs = upload.ReferenceCache()
    c = {k: k for k in OUTPUT_KEYS}  # outputs_for keys its values by component; names stand in for them here
    panel = {k: k for k in ("status", "case", "checked")}
    handler = upload.make_check_handler(cache, refs, c, panel)

    def check(files):
        """The handler's last update (it yields the reason before raising gr.Error on a refused upload)."""
        updates = []
        try:
            for update in handler(files):
                updates.append(update)
        except Exception:
            assert updates and updates[-1]["state"] is None and updates[-1]["status"].startswith("❌")
            raise
        return updates[-1]

    return cache, refs, check


def test_upload_check_shows_every_view(panel_env, tiny_app_reference, upload_dir):
    from demo.handlers import OUTPUT_KEYS

    cache, refs, check = panel_env
    ours_t, ref = tiny_app_reference
    good = save_result(upload_dir / "ours.safetensors", *result_from_gpt(ours_t, ref))
    out = check([str(good)])
    assert set(OUTPUT_KEYS) <= set(out)
    assert out["state"]["verdict_kind"] == "identical" and out["state"]["subject"] == "Result file"
    assert "identical to HuggingFace" in out["verdict"] and "✅ agrees" in out["status"]
    assert len(out["state"]["layers"]) == 4 + 2 + 1  # tiny model: embeddings, 4 blocks, ln_f, lm_head
    for key in ("step_fig", "top50_fig", "heat_fig", "entropy_fig", "layers_fig"):
        assert out[key] is not None and len(out[key].data) > 0, key
    # the mistake a port can make shows as such, at its layer
    bad = save_result(upload_dir / "bad.safetensors", *result_from_gpt(apply_fault(ours_t, "c_proj_not_transposed"),
                                                                       ref))
    out = check([str(bad)])
    assert out["state"]["verdict_kind"] == "model" and out["state"]["first_diverging_layer"] == "block 0"
    assert "❌ differs" in out["status"]
    assert len(refs._refs) == 1  # the second upload reused the cached reference


def test_upload_bad_inputs(panel_env, tiny_app_reference, upload_dir, tmp_path, monkeypatch):
    import gradio as gr
    from demo import inputs

    cache, refs, check = panel_env
    ours_t, ref = tiny_app_reference
    manifest, tensors = result_from_gpt(ours_t, ref, layers=False, sampled=False)

    def refused(files, match):
        with pytest.raises(gr.Error, match=match):
            check(files)

    refused(None, "upload a result file")
    refused(["/etc/passwd"], "file paths are not accepted")
    outside = save_result(tmp_path / "outside.safetensors", manifest, tensors)
    refused([str(outside)], "file paths are not accepted")
    refused([{"path": str(outside)}], "file paths are not accepted")
    text = upload_dir / "result.safetensors"
    text.write_text("hello")
    refused([str(text)], "not a safetensors file")
    two = save_result(upload_dir / "two.safetensors", manifest, tensors)
    refused([str(two), str(two)], "upload one result file")
    refused([str(_write(upload_dir, {**manifest, "model": "my-gpt2"}, tensors))], "does not serve")
    refused([str(_write(upload_dir, {**manifest, "version": 3}, tensors))], "format version 3")
    nan = tensors["case0.logits"].clone()
    nan[0, 0, 0] = float("nan")
    refused([str(_write(upload_dir, manifest, {**tensors, "case0.logits": nan}))], "NaN/Inf")
    many = {**manifest, "cases": [dict(manifest["cases"][0], name=f"case{i}") for i in range(5)]}
    refused([str(_write(upload_dir, many, tensors))], "at most 4")
    monkeypatch.setattr(inputs, "MAX_UPLOAD_BYTES", 1 << 20)
    refused([str(two)], "the limit is 1 MiB")
    monkeypatch.undo()
    # a separate manifest file is accepted
    bare = upload_dir / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bare))
    side = upload_dir / "manifest.json"
    side.write_text(json.dumps(manifest))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(upload_dir))
    assert check([str(bare), str(side)])["state"]["verdict_kind"] == "logits_agree"


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_upload_result_below_float32(panel_env, tiny_app_reference, upload_dir, precision):
    """The panel builds the reference with HF's own error at the result's precision (from its logits' dtype)."""
    cache, refs, check = panel_env
    ours_t, ref = tiny_app_reference  # a reference without precisions: same reference_id as the panel's
    manifest, tensors = result_from_gpt(ours_t, ref, precision=precision)
    del manifest["precision"]
    out = check([str(save_result(upload_dir / f"{precision}.safetensors", manifest, tensors))])
    assert out["state"]["precision"]["name"] == precision, out["state"]["verdict"]
    assert out["state"]["verdict"].startswith(f"consistent with {precision} precision") and out["state"]["agree"]
    assert "✅ agrees" in out["status"]
    assert any(key[-1] == (precision,) for key in refs._refs)
    bad = result_from_gpt(apply_fault(ours_t, "c_proj_not_transposed@0"), ref, precision=precision, sampled=False)
    out = check([str(save_result(upload_dir / f"bad-{precision}.safetensors", *bad))])
    assert out["state"]["verdict_kind"] == "model" and out["state"]["first_diverging_layer"] == "block 0"
