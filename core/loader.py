"""The one loader that touches the outside world: Hub id or local directory -> checkpoint files -> models.

Everything else in `core` works on tensors and paths this module hands it. Hub downloads go through the
huggingface_hub cache, in bounded time: every HTTP request has connect/read timeouts and each model's download a
total budget. config.json is fetched and checked first, the weights only for a GPT-2. Each failure is a typed
ModelNotAvailableError whose `reason` tells offline, unreachable, timed out, server error, no such model, gated,
not a GPT-2 and no safetensors apart. Knows nothing about tensors beyond reading a checkpoint's files.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HubTimeoutError, ModelNotAvailableError
from .model import GPT, GPTConfig
from .port import port_from_hf

__all__ = ["ModelNotAvailableError", "HubTimeoutError", "resolve_checkpoint", "load_pretrained", "load_hf_model",
           "load_pair", "load_hf_config", "load_state_dict", "KNOWN_GPT2_MODELS"]

# What a GPT-2 checkpoint needs from the Hub besides config.json: weights (safetensors only), tokenizer, defaults.
_HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "vocab.json",
    "merges.txt",
]
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# GPT-2 checkpoints on the Hub, for "did you mean" on a typo (legacy ids and their current names).
KNOWN_GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-community/gpt2",
                     "openai-community/gpt2-medium", "openai-community/gpt2-large", "openai-community/gpt2-xl",
                     "distilbert/distilgpt2")
# Time limits (seconds): per HTTP request (connect, and between two reads) and per model download in total.
HUB_TIMEOUT_ENV, HUB_BUDGET_ENV = "PARITY_LAB_HUB_TIMEOUT", "PARITY_LAB_HUB_BUDGET"
DEFAULT_HUB_TIMEOUT_S, DEFAULT_HUB_BUDGET_S = 10.0, 900.0
_LOCAL_TODO = ("pass a local checkpoint directory instead (config.json + model.safetensors, e.g. one written by "
               "GPT2LMHeadModel.save_pretrained())")


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def hub_timeout_s() -> float:
    """Connect/read timeout for one Hub request: $PARITY_LAB_HUB_TIMEOUT, else 10 s (huggingface_hub's own)."""
    return _env_seconds(HUB_TIMEOUT_ENV, DEFAULT_HUB_TIMEOUT_S)


def hub_budget_s() -> float:
    """Total time allowed for one model's Hub download: $PARITY_LAB_HUB_BUDGET, else 900 s."""
    return _env_seconds(HUB_BUDGET_ENV, DEFAULT_HUB_BUDGET_S)


def _has_weights(path: Path) -> bool:
    return any((path / f).is_file() for f in _WEIGHT_FILES)


def _local_checkpoint(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"{path} has no config.json: not a HuggingFace checkpoint directory",
                                     model=str(path))
    if not _has_weights(path):
        raise ModelNotAvailableError(f"{path} has no weights (expected one of {', '.join(_WEIGHT_FILES)})",
                                     model=str(path))
    return path


def is_local_name(name_or_path: str | os.PathLike) -> bool:
    """A path (existing, or spelled like one), not a Hub id."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    return path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def resolve_checkpoint(name_or_path: str | os.PathLike, *, budget_s: float | None = None) -> Path:
    """A local checkpoint directory, or a Hub model id found in the Hub cache or downloaded into it.

    For a Hub id: config.json first (refused unless it is a GPT-2 this code supports), then the weights and
    tokenizer files, all within `budget_s` seconds (default: $PARITY_LAB_HUB_BUDGET, else 900).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _local_checkpoint(path)
    name = str(name_or_path)
    if is_local_name(name):
        raise ModelNotAvailableError(f"no checkpoint directory at {name}", model=name)
    from huggingface_hub import hf_hub_download  # only this module talks to the Hub

    _bound_hub_requests()
    budget = Budget.start(budget_s if budget_s is not None else hub_budget_s())
    config_file = Path(_hub_call(name, "config.json", budget, hf_hub_download, repo_id=name, filename="config.json"))
    check_gpt2_config(config_file.parent, name)
    local = Path(_hub_call(name, "the weights and tokenizer files", budget, _fetch_files, name))
    if not _has_weights(local):  # cannot happen: _fetch_files checks; kept as the invariant callers rely on
        raise ModelNotAvailableError(f"Hub model {name!r}: no weights in {local}", model=name, reason="server_error")
    return local


def _fetch_files(name: str) -> str:
    """The files a GPT-2 needs (_HUB_PATTERNS), one after the other in the calling thread (no worker pool that
    would outlive a give-up): the Hub's file list, then each file through the Hub cache. With the Hub unavailable,
    a complete cached copy serves. Returns the snapshot directory."""
    from fnmatch import fnmatch

    import httpx2
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub import errors as hub

    try:
        info = HfApi().model_info(name)
    except (httpx2.TransportError, hub.OfflineModeIsEnabled, hub.HfHubHTTPError) as exc:
        if isinstance(exc, hub.RepositoryNotFoundError):
            raise
        try:  # the Hub cannot list the files: a complete copy in the cache will do
            local = snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS, local_files_only=True)
        except hub.LocalEntryNotFoundError:
            raise exc from None
        if _has_weights(Path(local)):
            return local
        raise exc from None
    wanted = sorted((s.rfilename for s in info.siblings or [] if s.rfilename != "config.json"  # fetched first
                     and any(fnmatch(s.rfilename, p) for p in _HUB_PATTERNS)),
                    key=lambda f: (f.endswith(".safetensors"), f))  # small files first, the weights last
    if not any(f.endswith(".safetensors") for f in wanted):
        raise ModelNotAvailableError(
            f"Hub model {name!r} has no safetensors weights (this tool downloads model.safetensors only, never "
            "pickled pytorch_model.bin files)",
            "Convert it with GPT2LMHeadModel.from_pretrained(...).save_pretrained(DIR) and pass DIR instead",
            model=name, reason="no_safetensors")
    paths = [hf_hub_download(repo_id=name, filename=f) for f in wanted]
    return str(Path(paths[-1]).parent)  # every file of one revision lands in the same snapshot directory


# ---------------------------------------------------------------------------------------------------------
# Bounded Hub calls


def _bound_hub_requests() -> None:
    """Give huggingface_hub's HTTP client a connect/read timeout on every request (it has none by default, and
    its API calls pass timeout=None). Leaves a client factory the user installed alone."""
    from huggingface_hub.utils import _http

    if getattr(_http._GLOBAL_CLIENT_FACTORY, "_parity_lab", False):
        return
    if _http._GLOBAL_CLIENT_FACTORY is not _http.default_client_factory:
        return  # the user's own client: their timeouts
    import httpx2

    class BoundedTransport(httpx2.HTTPTransport):
        """Every timeout of every request capped at hub_timeout_s() (read at request time)."""

        def handle_request(self, request):
            limit = hub_timeout_s()
            given = request.extensions.get("timeout") or {}
            request.extensions = {**request.extensions, "timeout": {
                k: limit if given.get(k) is None else min(given[k], limit) for k in ("connect", "read", "write", "pool")}}
            return super().handle_request(request)

    def factory():
        client = _http.default_client_factory()
        client._transport = BoundedTransport()  # the same client, its transport bounded
        # huggingface_hub closes its shared client when any request fails to connect: a request in flight on it in
        # another thread (another model's download) would die with "Bad file descriptor". The client is replaced
        # and dropped instead; its connections close when it is collected.
        client.close = lambda: None
        return client

    factory._parity_lab = True
    _http.set_client_factory(factory)


class _HubLog(logging.Handler):
    """huggingface_hub's retry warnings from one Hub call's thread: "HTTP Error 503 thrown while requesting HEAD
    url" (so a call that runs out of time while the Hub keeps answering 5xx is reported as a server error, not a
    timeout); "'<error>' thrown while requesting ..." (a connection failure, or a request that timed out after the
    first one did) and a second "Error while downloading ...: timed out" (a stalled body): reported at once, not
    after every retry with its back-off."""

    HTTP = re.compile(r"HTTP Error (\d+) thrown while requesting (\w+) (\S+)")
    NETWORK = re.compile(r"'(.*)' thrown while requesting (\w+) (\S+)", re.S)
    BODY = re.compile(r"Error while downloading from (\S+): (.*)", re.S)

    def __init__(self, wake: threading.Event):
        super().__init__(logging.WARNING)
        self.wake = wake
        self.thread: int | None = None  # the call's worker thread, set by the worker itself
        self.http_errors: list[tuple[int, str, str]] = []
        self.network_error: tuple[str, str, str] | None = None
        self.timed_out: tuple[str, str] | None = None
        self.body_timeouts = 0

    def emit(self, record):
        if record.thread != self.thread:
            return
        message = record.getMessage()
        if m := self.HTTP.search(message):
            self.http_errors.append((int(m.group(1)), m.group(2), m.group(3)))
            return
        if m := self.NETWORK.search(message):
            if "timed out" in m.group(1):  # the second request in a row without an answer: stop waiting
                self.timed_out = (m.group(2), m.group(3))
            else:
                self.network_error = (m.group(1), m.group(2), m.group(3))
        elif (m := self.BODY.search(message)) and "timed out" in m.group(2):
            self.body_timeouts += 1
            if self.body_timeouts < 2:
                return
            self.timed_out = ("GET", m.group(1).rstrip(":"))
        else:
            return
        _ABANDONED.add(record.thread)  # given up on from now: its next lines ("Retrying in 1s") are not news
        _silence_abandoned()
        self.wake.set()


@dataclass(frozen=True)
class Budget:
    """The time allowed for one model's Hub download: `seconds` in all, ending at `deadline` (time.monotonic)."""

    seconds: float
    deadline: float

    @classmethod
    def start(cls, seconds: float) -> Budget:
        return cls(seconds, time.monotonic() + seconds)


_ABANDONED: set[int] = set()  # threads of Hub calls given up on: their retry warnings are no longer news


def _silence_abandoned() -> None:
    """Drop huggingface_hub's log lines from abandoned calls' threads (they would follow the error message)."""
    for handler in logging.getLogger("huggingface_hub").handlers:
        if not any(getattr(f, "_parity_lab", False) for f in handler.filters):
            drop = lambda record: record.thread not in _ABANDONED  # noqa: E731
            drop._parity_lab = True
            handler.addFilter(drop)


def _hub_call(name: str, what: str, budget: Budget, fn, /, *args, **kwargs):
    """fn(**kwargs) in a daemon thread, given up at the budget's deadline; every failure -> ModelNotAvailableError."""
    result: dict = {}
    done = threading.Event()

    def work():
        watch.thread = threading.get_ident()
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc
        finally:
            done.set()
            _ABANDONED.discard(threading.get_ident())  # thread ids are reused: forget this one

    watch = _HubLog(done)
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(watch)
    started = time.monotonic()
    try:
        worker = threading.Thread(target=work, name=f"hub-download {name}", daemon=True)
        worker.start()
        done.wait(max(budget.deadline - started, 0.0))
        if "value" not in result and "error" not in result:
            _ABANDONED.add(worker.ident)  # it ends by itself (every request is bounded); nobody waits for it
            _silence_abandoned()
            if watch.network_error:  # huggingface_hub is retrying a failed connection: say so now
                error, method, url = watch.network_error
                raise _unreachable(name, what, f"{error.splitlines()[0][:200]} ({method} {url})")
            if watch.timed_out:
                method, url = watch.timed_out
                raise HubTimeoutError(
                    f"the Hugging Face Hub at {_endpoint()} stopped answering while getting {what} of {name!r} "
                    f"(no data from {method} {url} for {hub_timeout_s():g} s, twice), and it is not in the local "
                    "cache", _todo_timeout(), model=name, reason="timeout")
            if watch.http_errors:
                raise _server_error(name, what, *watch.http_errors[-1], retried=True)
            raise HubTimeoutError(
                f"gave up getting {what} of {name!r} from the Hugging Face Hub at {_endpoint()}: the Hub did not "
                f"finish answering within the {budget.seconds:g} s allowed for one model's download",
                _todo_timeout(), model=name, reason="timeout")
    finally:
        hub_logger.removeHandler(watch)
    if "error" in result:
        raise _explain(result["error"], name, what, watch.http_errors) from result["error"]
    return result["value"]


def _unreachable(name: str, what: str, detail: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"could not reach the Hugging Face Hub at {_endpoint()} to get {what} of {name!r} ({detail}), and it is "
        "not in the local cache", f"Check the internet connection (and HF_ENDPOINT or proxy settings), or {_LOCAL_TODO}",
        model=name, reason="unreachable")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_switch() -> str | None:
    """Which setting switched Hub access off, or None when it is on."""
    from huggingface_hub import constants

    if not constants.is_offline_mode():
        return None
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    return "HF_HUB_OFFLINE"


def _todo_timeout() -> str:
    return (f"The Hub may be slow or down: try again later, allow more time ({HUB_TIMEOUT_ENV} seconds per request, "
            f"{HUB_BUDGET_ENV} per model), or {_LOCAL_TODO}")


def _server_error(name, what, status, method, url, retried=False) -> ModelNotAvailableError:
    from http import HTTPStatus

    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    again = ", again on every retry" if retried else ""
    return ModelNotAvailableError(
        f"the Hugging Face Hub answered HTTP {status}{phrase} to {method} {url}{again}, while getting {what} "
        f"of {name!r}", f"The Hub is having trouble: try again later, or {_LOCAL_TODO}",
        model=name, reason="server_error", status=status)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _explain(exc: BaseException, name: str, what: str, http_errors) -> ModelNotAvailableError:
    """One huggingface_hub/httpx failure -> the ModelNotAvailableError that says which it was and what to do."""
    import httpx2
    from huggingface_hub import errors as hub

    if isinstance(exc, ModelNotAvailableError):
        return exc
    chain = _chain(exc)
    first = lambda *types: next((e for e in chain if isinstance(e, types)), None)  # noqa: E731
    switch = _offline_switch()
    if switch or first(hub.OfflineModeIsEnabled):
        close = () if name in KNOWN_GPT2_MODELS else _suggest(name)
        typo = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        return ModelNotAvailableError(
            f"model {name!r} is not in the local Hugging Face cache{typo}, and Hub downloads are switched off "
            f"({switch or 'offline mode'})",
            f"Unset {(switch or 'HF_HUB_OFFLINE').split('=')[0]} to download it, or {_LOCAL_TODO}",
            model=name, reason="offline", suggestions=close)
    if first(hub.HFValidationError):
        return ModelNotAvailableError(f"{name!r} is neither a Hub model id nor a local directory",
                                      _todo_not_found(name), model=name, reason="not_found",
                                      suggestions=_suggest(name))
    if err := first(hub.GatedRepoError):
        return ModelNotAvailableError(
            f"{name!r} is gated or private on the Hugging Face Hub (HTTP {err.response.status_code}): downloading it "
            "needs an account that was granted access",
            f"Accept its terms on its Hub page and log in (`hf auth login` or $HF_TOKEN), or {_LOCAL_TODO}",
            model=name, reason="gated", status=err.response.status_code)
    if err := first(hub.RepositoryNotFoundError, hub.RevisionNotFoundError):
        return ModelNotAvailableError(f"there is no model {name!r} on the Hugging Face Hub ({_endpoint()})",
                                      _todo_not_found(name), model=name, reason="not_found",
                                      status=err.response.status_code, suggestions=_suggest(name))
    if err := first(hub.RemoteEntryNotFoundError):
        if what == "config.json":
            return ModelNotAvailableError(
                f"Hub model {name!r} has no config.json: not a transformers checkpoint, so not a GPT-2 one",
                _todo_not_gpt2(), model=name, reason="not_gpt2", status=err.response.status_code)
        return _server_error(name, what, err.response.status_code, err.response.request.method,
                             str(err.response.request.url))
    if err := first(hub.HfHubHTTPError):
        if err.response.status_code in (401, 403):
            return ModelNotAvailableError(
                f"the Hugging Face Hub refused access to {name!r} (HTTP {err.response.status_code})",
                f"If it is gated or private, log in (`hf auth login` or $HF_TOKEN) with an account that has access, "
                f"or {_LOCAL_TODO}", model=name, reason="gated", status=err.response.status_code)
        return _server_error(name, what, err.response.status_code, err.response.request.method,
                             str(err.response.request.url))
    if http_errors:  # the Hub answered 5xx, huggingface_hub retried, then failed some other way
        return _server_error(name, what, *http_errors[-1], retried=True)
    if err := first(httpx2.TimeoutException):
        return HubTimeoutError(
            f"the Hugging Face Hub at {_endpoint()} stopped answering while getting {what} of {name!r} "
            f"({type(err).__name__} after {hub_timeout_s():g} s without data), and it is not in the local cache",
            _todo_timeout(), model=name, reason="timeout")
    if err := first(hub.FileMetadataError):
        return ModelNotAvailableError(
            f"{_endpoint()} did not answer like the Hugging Face Hub while getting {what} of {name!r} (no "
            "X-Repo-Commit header)", f"Check HF_ENDPOINT and any proxy, or {_LOCAL_TODO}",
            model=name, reason="server_error")
    err = first(httpx2.TransportError, ConnectionError, OSError) or exc
    return _unreachable(name, what, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}")


def _suggest(name: str) -> tuple[str, ...]:
    known = {m.lower(): m for m in KNOWN_GPT2_MODELS}
    return tuple(known[m] for m in difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.6))


def _todo_not_found(name: str) -> str:
    close = _suggest(name)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}GPT-2 checkpoints on the Hub include {', '.join(KNOWN_GPT2_MODELS[:5])}; a local directory works too"


def _todo_not_gpt2() -> str:
    return f"This tool compares GPT-2 checkpoints (model_type 'gpt2') only, e.g. {', '.join(KNOWN_GPT2_MODELS[:5])}"


def check_gpt2_config(checkpoint: Path, name: str | None = None) -> None:
    """Refuse a checkpoint whose config.json is not a GPT-2 this code supports, before any weight is read."""
    label = repr(name) if name else str(checkpoint)
    try:
        raw = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"{label}: config.json is unreadable ({type(exc).__name__})", model=name,
                                     reason="not_gpt2") from None
    if not isinstance(raw, dict) or raw.get("model_type") not in (None, "gpt2"):
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise ModelNotAvailableError(
            f"{label} is not a GPT-2 checkpoint: its config.json says model_type={found!r} (checked before "
            "downloading any weights)", _todo_not_gpt2(), model=name, reason="not_gpt2")
    from transformers import GPT2Config

    GPTConfig.from_hf(GPT2Config.from_dict(raw))  # unsupported options -> UnsupportedConfigError, by name


def load_hf_config(checkpoint: Path):
    from transformers import GPT2Config

    check_gpt2_config(checkpoint)
    return GPT2Config.from_pretrained(checkpoint)


def load_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory as saved (safetensors preferred; .bin only with weights_only)."""
    from safetensors.torch import load_file

    if (checkpoint / "model.safetensors").is_file():
        return load_file(checkpoint / "model.safetensors")
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(checkpoint / shard))
        return state
    return torch.load(checkpoint / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)


def load_pretrained(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
    budget_s: float | None = None,
) -> GPT:
    """Our GPT from a Hub id (`gpt2`, `openai-community/gpt2-medium`, `distilgpt2`, ...) or a local directory.
    `budget_s` bounds a Hub download (default $PARITY_LAB_HUB_BUDGET, else 900 s)."""
    checkpoint = resolve_checkpoint(name_or_path, budget_s=budget_s)
    config = GPTConfig.from_hf(load_hf_config(checkpoint))
    model = port_from_hf(load_state_dict(checkpoint), config).to(device=device, dtype=dtype)
    return model.use_decode_layout() if torch.device(device).type == "cpu" else model


def load_hf_model(name_or_path: str | os.PathLike, *, attn_implementation: str = "sdpa", dtype=torch.float32,
                  budget_s: float | None = None):
    """HuggingFace's own GPT2LMHeadModel for the same checkpoint (the reference we compare with)."""
    from transformers import GPT2LMHeadModel

    checkpoint = resolve_checkpoint(name_or_path, budget_s=budget_s)
    GPTConfig.from_hf(load_hf_config(checkpoint))  # refuse unsupported options before the expensive part
    model = GPT2LMHeadModel.from_pretrained(checkpoint, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval()


def load_pair(name_or_path: str | os.PathLike, *, dtype=torch.float32, budget_s: float | None = None):
    """(ours, HF's) for one checkpoint; ours is a view of HF's weights, so the pair costs one model's memory."""
    hf = load_hf_model(name_or_path, dtype=dtype, budget_s=budget_s)
    return port_from_hf(hf), hf
