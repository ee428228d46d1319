"""The Hub path end to end against a stand-in Hub on 127.0.0.1 (tests/fake_hub.py): the Python API and the
dashboard's model cache (the command line's: tests/cli/test_hub_cli.py), healthy and with every kind of failure.
Time limits are set small (1 s per request, a few seconds per model) so each failure shows up in bounded time."""

import socket
import threading
import time

import huggingface_hub.constants as hub_constants
import pytest
import torch
from apphelper import page_load
from fake_hub import wait_until

from core import ModelNotAvailableError, load_pretrained, load_tokenizer
from core.errors import HubTimeoutError
from core.loader import resolve_checkpoint
from demo import handlers, inputs
from demo.models import TINY, ModelCache, ModelStillLoadingError, ModelUnavailableHereError

PROMPT = "Hello, I'm a language model,"
LOCAL_TODO = "pass a local checkpoint directory"
BUDGET_S = 3.0  # per model, in the in-process tests


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """huggingface_hub in this process pointed at the stand-in Hub, with an empty cache and 1 s per request."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("PARITY_LAB_HUB_TIMEOUT", "1")
    hub.clear()
    yield hub
    hub.clear()


def fetched(hub, kind="GET") -> set[str]:
    """File names the client downloaded (GET on resolve, or of an LFS blob)."""
    return {r.rsplit("/", 1)[1] for r in hub.requests if r.startswith(kind) and "/resolve/" in r} | \
        {"<lfs blob>" for r in hub.requests if r.startswith("GET /lfs/")}


# ---------------------------------------------------------------------------------------------------------
# Python API


def test_download_fetches_config_first_then_only_what_is_needed_then_works_from_cache(online, tiny_hf):
    ours = load_pretrained("gpt2")
    requests = [r for r in online.requests if "/api/agent-harnesses" not in r]
    assert requests[0] == "HEAD /gpt2/resolve/main/config.json"  # the legacy id, redirected
    assert "HEAD /openai-community/gpt2/resolve/main/config.json" in requests
    first_weight = next(i for i, r in enumerate(requests) if "safetensors" in r or "/lfs/" in r)
    assert max(i for i, r in enumerate(requests) if r.endswith("/config.json")) < first_weight
    assert fetched(online) == {"config.json", "generation_config.json", "vocab.json", "merges.txt", "<lfs blob>"}
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert torch.allclose(ours(x), tiny_hf(x).logits, atol=1e-5)
    assert "models--gpt2" in load_tokenizer("gpt2").source  # the model's own files, from the cache
    # the Hub failing every request afterwards: the cache serves
    online.clear()
    online.fault(".", status=500)
    again = load_pretrained("gpt2")
    assert torch.equal(again.lm_head.weight, ours.lm_head.weight)


def test_non_gpt2_is_refused_before_any_weight_is_fetched(online):
    with pytest.raises(ModelNotAvailableError, match="model_type='bert'") as info:
        resolve_checkpoint("google-bert/bert-base-uncased", budget_s=BUDGET_S)
    assert info.value.reason == "not_gpt2"
    assert fetched(online) == {"config.json"} and not any("safetensors" in r for r in online.requests)


def test_unsupported_gpt2_options_are_refused_before_any_weight_is_fetched(online):
    from core.model import UnsupportedConfigError

    with pytest.raises(UnsupportedConfigError, match="add_cross_attention=True"):
        resolve_checkpoint("someone/gpt2-cross-attention", budget_s=BUDGET_S)
    assert fetched(online) == {"config.json"}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


# (label, model, faults, reason, status, text in the message, CLI advice expected)
CASES = [
    ("typo", "gtp2", [], "not_found", 401, "Did you mean 'gpt2'?", False),
    ("gated", "someone/gated-gpt2", [], "gated", 401, "gated or private", True),
    ("bin only", "someone/gpt2-bin-only", [], "no_safetensors", None, "no safetensors weights", False),
    ("503 on resolve", "gpt2", [dict(path="resolve/main/config.json", status=503)], "server_error", 503,
     "HTTP 503 Service Unavailable", True),
    ("500 on the model API", "gpt2", [dict(path="^/api/models/", status=500)], "server_error", 500, "HTTP 500", True),
    ("500 on the LFS host", "gpt2", [dict(path="^/lfs/", status=500)], "server_error", 500, "HTTP 500", True),
    ("stalled config", "gpt2", [dict(path="config.json", stall=True)], "timeout", None, "stopped answering", True),
    ("stalled model API", "gpt2", [dict(path="^/api/models/", stall=True)], "timeout", None, "stopped answering",
     True),
    ("stalled weights body", "gpt2", [dict(path="^/lfs/", stall_body=True)], "timeout", None,
     "the weights and tokenizer files of 'gpt2'", True),  # the budget or two reads without data, whichever first
    ("unreachable", "gpt2", "closed port", "unreachable", None, "could not reach", True),
]


@pytest.mark.parametrize("label,model,faults,reason,status,text,local_advice", CASES, ids=[c[0] for c in CASES])
def test_each_hub_failure_has_its_own_message_in_bounded_time(online, monkeypatch, label, model, faults, reason,
                                                              status, text, local_advice):
    if faults == "closed port":
        url = closed_port_url()
        monkeypatch.setattr(hub_constants, "ENDPOINT", url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    else:
        for f in faults:
            online.fault(**f)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint(model, budget_s=BUDGET_S)
    elapsed = time.monotonic() - start
    exc = info.value
    assert elapsed < BUDGET_S + 1.5, f"{label}: {elapsed:.1f} s"
    assert (exc.reason, exc.status) == (reason, status), str(exc)
    assert text in str(exc) and repr(model) in str(exc)
    assert (LOCAL_TODO in str(exc)) == local_advice, str(exc)
    assert isinstance(exc, HubTimeoutError) == (reason == "timeout")
    assert "\n" not in str(exc)
    if reason == "no_safetensors":
        assert not any("pytorch_model.bin" in r for r in online.requests)


def test_offline_names_the_switch_that_is_on(online, monkeypatch):
    """TRANSFORMERS_OFFLINE alone switches huggingface_hub off too: say which, not 'could not be reached'."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="TRANSFORMERS_OFFLINE=1") as info:
        resolve_checkpoint("gpt2-large")
    assert info.value.reason == "offline" and LOCAL_TODO in str(info.value)
    assert online.requests == []
    with pytest.raises(ModelNotAvailableError, match="did you mean 'gpt2-xl'"):
        resolve_checkpoint("gpt2-xxl")


# ---------------------------------------------------------------------------------------------------------
# Dashboard: loads in the background, never blocking other models; UI wording


def timed(fn, *a, **k):
    start = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - start


def test_resident_and_tiny_models_are_served_while_another_download_hangs(online, bpe_dir):
    cache = ModelCache(max_models=1, bpe_dir=str(bpe_dir), budget_s=BUDGET_S, wait_s=30)
    gpt2 = cache.get("gpt2")
    cache.get(TINY)
    online.fault("gpt2-medium", stall=True)
    result = {}
    hung = threading.Thread(target=lambda: result.update(error=_catch(cache.get, "gpt2-medium")))
    hung.start()
    assert wait_until(lambda: "gpt2-medium" in cache.loading())
    assert wait_until(lambda: any("gpt2-medium" in r for r in online.requests))
    again, resident_s = timed(cache.get, "gpt2")
    _, tiny_s = timed(cache.get, TINY)
    assert hung.is_alive()  # still downloading (stalled) while those were served
    args = inputs.parse_inputs(cache, PROMPT, "gpt2", "hf", "generate", "none", 50, 1.0, 1.0, 42, 1, 3)
    (report, _), compare_s = timed(handlers.run_compare, cache, args)
    print(f"\nwhile gpt2-medium's download hangs: resident gpt2 lookup {resident_s * 1e3:.2f} ms, tiny lookup "
          f"{tiny_s * 1e3:.2f} ms, a full gpt2 compare {compare_s:.2f} s")
    assert again is gpt2 and resident_s < 0.05 and tiny_s < 0.05
    assert report.agree
    hung.join(BUDGET_S + 5)
    exc = result["error"]
    assert isinstance(exc, ModelUnavailableHereError) and exc.reason == "timeout"
    assert "--model DIR" in str(exc) and TINY in str(exc) and LOCAL_TODO not in str(exc)
    assert sorted(cache.resident()) == sorted(["gpt2", TINY])  # the failed download evicted nothing


def _catch(fn, *a):
    try:
        fn(*a)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def test_requests_for_the_same_model_share_one_load_and_eviction_keeps_one_big_model(online, bpe_dir, monkeypatch):
    # distilgpt2: a model no other test stalls, so no abandoned download of an earlier test can add a request here
    monkeypatch.setenv("PARITY_LAB_HUB_TIMEOUT", "10")  # a retry after a 1 s timeout on a busy machine would count twice
    cache = ModelCache(max_models=1, bpe_dir=str(bpe_dir), budget_s=10, wait_s=30)
    first = cache.get("gpt2")
    online.clear()
    online.fault("distilgpt2/resolve/main/config.json", method="HEAD", delay_s=0.5)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("distilgpt2"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert got[0] is not first and got[0].name == "distilgpt2"
    assert sum(r.startswith("GET ") and r.endswith("/distilgpt2/resolve/main/config.json") for r in online.requests) == 1, \
        online.requests
    assert cache.resident() == ["distilgpt2"]  # gpt2 evicted: max_models=1


def test_a_run_request_waits_a_bounded_time_for_a_loading_model(online, bpe_dir):
    cache = ModelCache(bpe_dir=str(bpe_dir), budget_s=BUDGET_S, wait_s=0.5)
    online.fault("gpt2-medium", stall=True)
    _, waited = timed(_catch, cache.get, "gpt2-medium")
    exc = _catch(cache.get, "gpt2-medium")
    assert isinstance(exc, ModelStillLoadingError) and "still loading" in str(exc) and TINY in str(exc)
    assert waited < 1.5
    assert wait_until(lambda: not cache.loading(), BUDGET_S + 5)


def test_page_load_never_hangs_and_then_says_why(online, bpe_dir):
    cache = ModelCache(bpe_dir=str(bpe_dir), budget_s=BUDGET_S, page_wait_s=0.5)
    online.fault("gpt2-medium", stall=True)
    on_load = handlers.make_load_handler(cache, "gpt2-medium")
    (banner, dropdown), page_s = timed(page_load, on_load)
    print(f"\npage load while the default model's download hangs: {page_s:.2f} s")
    assert page_s < 5 and dropdown.value == TINY and banner.visible  # the tiny model built meanwhile (~1 s)
    assert "still downloading" in banner.value and "`gpt2-medium`" in banner.value
    assert wait_until(lambda: not cache.loading(), BUDGET_S + 5)
    (banner, dropdown), page_s = timed(page_load, on_load)
    assert page_s < 1 and dropdown.value == TINY  # the recent failure is reported, not retried
    assert "could not be loaded" in banner.value and "stopped answering" in banner.value
    assert "--model DIR" in banner.value
    assert LOCAL_TODO not in banner.value


def test_offline_dashboard_says_what_works_there(monkeypatch, tmp_path, bpe_dir):
    """Issue 11 item 4: offline, the dashboard never advises a local directory it cannot accept."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    cache = ModelCache(bpe_dir=str(bpe_dir))
    exc = _catch(cache.get, "gpt2")
    assert isinstance(exc, ModelUnavailableHereError) and exc.reason == "offline"
    assert LOCAL_TODO not in str(exc) and "--model DIR" in str(exc) and TINY in str(exc)
    banner, _ = page_load(handlers.make_load_handler(ModelCache(bpe_dir=str(bpe_dir)), "gpt2"))
    assert "Offline mode" in banner.value and "--model DIR" in banner.value and LOCAL_TODO not in banner.value


def test_choosing_a_model_starts_its_load_and_says_how_it_goes(online, bpe_dir, monkeypatch):
    monkeypatch.setenv("PARITY_LAB_HUB_TIMEOUT", "10")
    cache = ModelCache(bpe_dir=str(bpe_dir), budget_s=10, page_wait_s=0.2)
    online.fault("gpt2-medium/resolve/main/config.json", method="HEAD", delay_s=3.0)
    on_model = handlers.make_model_handler(cache)
    note, chose_s = timed(on_model, "gpt2-medium")  # returns while the config request is still held back
    assert note.visible and "`gpt2-medium` is downloading" in note.value and chose_s < 2.5
    assert wait_until(lambda: "gpt2-medium" in cache.resident(), 15)
    assert on_model("gpt2-medium").visible is False  # ready: nothing to say
    assert "not available here" in on_model("../etc/passwd").value


def test_offline_page_load_shows_the_fallback_first_and_no_progress_that_cannot_progress(monkeypatch, tmp_path,
                                                                                          bpe_dir):
    """Offline, the page's first update is the fallback banner and the tiny model's name: no "loading gpt2"
    progress is shown for a download that cannot happen."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    progress = []
    on_load = handlers.make_load_handler(ModelCache(bpe_dir=str(bpe_dir)), "gpt2")
    updates = on_load(progress=lambda *a, **k: progress.append((a, k)))
    banner, dropdown = next(updates)
    assert "Offline mode" in banner.value and dropdown.value == TINY and progress == []
    list(updates)  # the tiny model is built by the time the page settles
    assert progress == []


@pytest.mark.slow
def test_app_stops_printing_hub_retries_once_it_has_fallen_back(bpe_dir, tmp_path):
    """The Hub unreachable (nothing listens at HF_ENDPOINT, not offline mode): the app falls back at the first
    failed request, and the log does not go on with huggingface_hub's "Retrying in 1s/2s/4s/8s"."""
    from apphelper import AppServer, free_port

    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "HF_HOME": str(tmp_path / "hf-home")}
    with AppServer(bpe_dir, model="gpt2", log_dir=tmp_path, env=env) as app:
        assert wait_until(lambda: "could not be loaded" in app.log(), 60), app.log()
        time.sleep(4)  # the first three retries (after 1, 2 and 4 s) would be in the log by now
        log = app.log()
    assert "could not reach the Hugging Face Hub" in log, log
    assert "Retrying in" not in log and log.count("thrown while requesting") <= 1, log


def test_a_connection_failure_elsewhere_does_not_break_a_download_in_flight(online):
    """huggingface_hub closes its one shared HTTP client whenever any request fails to connect (another model's
    download, an unreachable mirror): a request in flight on that client in another thread must still finish."""
    from huggingface_hub.utils import _http

    online.fault("gpt2/resolve/main/config.json", method="HEAD", delay_s=1.5, times=1)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("PARITY_LAB_HUB_TIMEOUT", "10")
    result = {}
    loading = threading.Thread(target=lambda: result.update(error=_catch(load_pretrained, "gpt2")))
    try:
        loading.start()
        assert wait_until(lambda: any(r.startswith("HEAD /gpt2/") for r in online.requests))
        time.sleep(0.3)  # the HEAD is now held back by the hub, waiting on the shared client's connection
        _http.close_session()  # what huggingface_hub does on a ConnectError in any thread
        loading.join(30)
    finally:
        monkey.undo()
    assert not loading.is_alive() and result["error"] is None, result
