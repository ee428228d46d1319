"""Which models the dashboard may load, and a small bounded cache of loaded (ours, HF, tokenizer) triples.

Knows the allowlist, the offline fallback, memory bounds and how a load failure is worded for a dashboard
visitor; knows nothing about the UI's layout. Models are loaded once, in the background, and shared read-only by
every request. A load never blocks requests for other models: a resident model or the built-in tiny one is
served at once while another downloads (or hangs), and a second request for a model being loaded waits for
that same load, for a bounded time. At most `max_models` Hub/local models stay resident (the tiny one is not
counted); a model is evicted only once the next one is downloaded and about to be built.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from core import GPT, Tokenizer, load_pair, load_tokenizer, port_from_hf
from core.errors import ModelNotAvailableError, ParityLabError
from core.loader import is_local_name, resolve_checkpoint

log = logging.getLogger("parity_lab")

HUB_ALLOWLIST = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
TINY = "tiny-random-gpt2"
# The built-in offline model: GPT-2's architecture and vocabulary, small dimensions, a fixed random seed.
TINY_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, n_positions=1024)
TINY_SEED = 1234
TINY_LOGIT_STD = 3.0  # ln_f's gain raised so distributions are peaked, like a trained model's
# How long a request waits for a model that is loading, counted from the start of that load (seconds): a run
# request (short: it holds one of the few run slots, which requests for other models need), and a page load or a
# choice in the model menu (the page stays usable on the tiny model meanwhile).
RUN_WAIT_ENV, PAGE_WAIT_ENV = "PARITY_LAB_LOAD_WAIT", "PARITY_LAB_PAGE_WAIT"
DEFAULT_RUN_WAIT_S, DEFAULT_PAGE_WAIT_S = 5.0, 8.0
# A page load reports a failure this recent instead of starting the same load again (a Generate always retries).
RETRY_AFTER_S = 60.0

# What a dashboard visitor can do about a model that could not be loaded (the CLI's advice, a local checkpoint
# directory, is not something the UI or the API accepts).
UI_NEXT_STEP = {
    "offline": "This server has no access to the Hugging Face Hub.",
    "unreachable": "This server cannot reach the Hugging Face Hub right now.",
    "timeout": "The Hub is slow or stalled: try again later.",
    "server_error": "The Hub is having trouble: try again later.",
    "not_found": "Pick another model from the list.",
    "gated": "This server has no access to it.",
    "not_gpt2": "Pick another model from the list.",
    "no_safetensors": "Pick another model from the list.",
    "local": "",
}
UI_ALTERNATIVE = (f"The built-in tiny model ({TINY}) works here; to compare your own checkpoint, start the app with "
                  "--model DIR (a local checkpoint directory).")


def ui_message(exc: ModelNotAvailableError) -> str:
    """The loader's error in words a dashboard visitor can act on."""
    step = UI_NEXT_STEP.get(exc.reason, "")
    return f"{exc.what[:1].upper()}{exc.what[1:]}. {step + ' ' if step else ''}{UI_ALTERNATIVE}"


class ModelNotAllowedError(ParityLabError, ValueError):
    """A model name the dashboard does not serve."""


class ModelUnavailableHereError(ParityLabError, RuntimeError):
    """A model the dashboard could not load, worded for the dashboard (`reason`, `what` from the loader's error)."""

    def __init__(self, exc: ModelNotAvailableError):
        super().__init__(ui_message(exc))
        self.reason, self.what, self.next_step = exc.reason, exc.what, UI_NEXT_STEP.get(exc.reason, "")


class ModelStillLoadingError(ParityLabError, RuntimeError):
    """A model whose load has been running longer than this request may wait."""

    def __init__(self, name: str, seconds: float):
        super().__init__(f"{name} is still loading (downloading from the Hugging Face Hub, started {seconds:.0f} s "
                         f"ago). Try again in a moment; meanwhile the built-in tiny model ({TINY}) works.")
        self.name, self.seconds = name, seconds


@dataclass
class LoadedModel:
    name: str
    ours: GPT
    hf: object
    tokenizer: Tokenizer


@dataclass
class _Load:
    """One model's load in flight: requests for the same model wait on `done`."""

    name: str
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: LoadedModel | None = None
    error: BaseException | None = None
    finished: float = 0.0


def build_tiny_pair() -> tuple[GPT, object]:
    """The built-in tiny random GPT-2, identical on every machine (the caller's global RNG untouched)."""
    from core.structured import random_gpt2

    hf = random_gpt2(seed=TINY_SEED, logit_std=TINY_LOGIT_STD, **TINY_SHAPE)
    hf.config._name_or_path = TINY
    return port_from_hf(hf), hf


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): a Hub model can then
    come only from the local cache, and no download can make progress."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class ModelCache:
    """Loads allowlisted models on demand in the background; keeps at most `max_models` resident (least recently
    used evicted; the tiny model not counted). `budget_s` bounds each Hub download (the loader's default if None);
    `wait_s` / `page_wait_s` bound how long a run request / a page load waits for a loading model."""

    def __init__(self, extra: list[str] | None = None, max_models: int = 1, bpe_dir: str | None = None, *,
                 budget_s: float | None = None, wait_s: float | None = None, page_wait_s: float | None = None):
        self.allowed = list(dict.fromkeys([*(extra or []), *HUB_ALLOWLIST, TINY]))
        self.max_models = max(1, int(max_models))
        self.bpe_dir = bpe_dir
        self.budget_s = budget_s
        self.wait_s = wait_s if wait_s is not None else _env_seconds(RUN_WAIT_ENV, DEFAULT_RUN_WAIT_S)
        self.page_wait_s = page_wait_s if page_wait_s is not None else _env_seconds(PAGE_WAIT_ENV,
                                                                                    DEFAULT_PAGE_WAIT_S)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loads: dict[str, _Load] = {}
        self._failed: dict[str, _Load] = {}  # the last failed load of each model
        self._lock = threading.Lock()  # guards the two dicts only; never held while loading
        self._build_lock = threading.Lock()  # one model built (weights in memory) at a time, after its download

    def check(self, name: str) -> str:
        if not isinstance(name, str) or name not in self.allowed:
            raise ModelNotAllowedError(f"model {name!r} is not available here; choose one of: {', '.join(self.allowed)}")
        return name

    def add(self, loaded: LoadedModel) -> None:
        """Serve a model built elsewhere (e.g. a benchmark's pair) under its name, which must be allowed."""
        self.check(loaded.name)
        with self._lock:
            self._models[loaded.name] = loaded

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def loading(self) -> list[str]:
        with self._lock:
            return list(self._loads)

    def prefetch(self, name: str) -> None:
        """Start loading `name` in the background (e.g. the default model at start-up); returns at once."""
        try:
            self.get(name, wait_s=0.0)
        except ParityLabError:
            pass  # still loading, or failed: logged by the load itself

    def get(self, name: str, wait_s: float | None = None, retry_after_s: float | None = None) -> LoadedModel:
        """The loaded model; starts its load if needed and waits until that load has run `wait_s` seconds
        (default: `self.wait_s` for a Hub model, as long as it takes for the tiny model or a local directory),
        then raises ModelStillLoadingError. A failed load raises its reason, worded
        for the dashboard; with `retry_after_s`, a failure that recent is reported without loading again."""
        self.check(name)
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            load = self._loads.get(name)
            failed = self._failed.get(name)
            if load is None and failed is not None and retry_after_s is not None and \
                    time.monotonic() - failed.finished < retry_after_s:
                load = failed
            elif load is None:
                load = self._loads[name] = _Load(name)
                threading.Thread(target=self._run, args=(load,), name=f"load {name}", daemon=True).start()
        if wait_s is None:  # a model built from local files cannot hang on the Hub: a request waits for it
            wait_s = float("inf") if name == TINY or is_local_name(name) else self.wait_s
        if not load.done.wait(None if wait_s == float("inf") else max(0.0, load.started + wait_s - time.monotonic())):
            raise ModelStillLoadingError(name, time.monotonic() - load.started)
        if load.error is not None:
            exc = load.error
            if isinstance(exc, ModelNotAvailableError):
                raise ModelUnavailableHereError(exc) from None
            raise exc
        return load.result

    def _run(self, load: _Load) -> None:
        name = load.name
        try:
            if name == TINY:
                ours, hf = build_tiny_pair()
                load.result = LoadedModel(name, ours, hf, self._tokenizer(None))
                with self._lock:
                    self._models[name] = load.result
            else:
                checkpoint = resolve_checkpoint(name, budget_s=self.budget_s)  # the download: no lock held
                with self._build_lock:
                    self._evict_for_one_more()
                    ours, hf = load_pair(checkpoint)
                    load.result = LoadedModel(name, ours, hf, self._tokenizer(checkpoint))
                    with self._lock:
                        self._models[name] = load.result
            log.info("model %s loaded in %.1f s (tokenizer: %s)", name, time.monotonic() - load.started,
                     load.result.tokenizer.source)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            load.error = exc
            if isinstance(exc, ParityLabError):
                log.warning("model %s could not be loaded: %s", name, exc)
            else:
                log.error("model %s could not be loaded", name, exc_info=exc)
        finally:
            load.finished = time.monotonic()
            with self._lock:
                self._loads.pop(name, None)
                if load.error is not None:
                    self._failed[name] = load
                else:
                    self._failed.pop(name, None)
            load.done.set()

    def _evict_for_one_more(self) -> None:
        """Make room for one more full-size model (memory is freed once running requests drop their refs)."""
        with self._lock:
            while sum(n != TINY for n in self._models) >= self.max_models:
                victim = next(n for n in self._models if n != TINY)
                del self._models[victim]
                log.info("model %s evicted to make room (max_models=%d)", victim, self.max_models)

    def _tokenizer(self, checkpoint: Path | None) -> Tokenizer:
        """The checkpoint's own vocab.json/merges.txt first; else the BPE directory given at start-up, $GPT2_BPE_DIR,
        the caches or the bundled copy."""
        if checkpoint is not None and (Path(checkpoint) / "vocab.json").is_file():
            return load_tokenizer(checkpoint)
        return load_tokenizer(self.bpe_dir)
