"""HuggingFace's side: its teacher-forced residual stream, its own generate()/pipeline as users call them (cached,
and run beside the model under test on a worker thread), and the effective settings transformers resolved.
Knows transformers, the global RNGs and what determines HF's results; knows nothing about our model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..sampling import SamplingSettings
from ..tokenizer import Tokenizer
from .report import ParityError, SettingRow

# HF's reference draws from the global RNG (torch.manual_seed + generate, set_seed + pipeline): one at a time.
HF_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def global_rng_section():
    """Serialise use of the global RNGs and leave them as they were (HF's reference seeds them)."""
    with HF_RNG_LOCK:
        torch_state = torch.get_rng_state()
        py_state = random.getstate()
        try:
            import numpy as np

            np_state = np.random.get_state()
        except ImportError:  # pragma: no cover - numpy comes with transformers
            np, np_state = None, None
        try:
            yield
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


@torch.inference_mode()
def hf_teacher_forced(hf, sequences: torch.Tensor, keep: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward of HF's model over the token streams -> its residual stream [embeddings, each block, ln_f]
    (the raw output of the last block comes from a hook: output_hidden_states puts ln_f's output last) and the
    logits of the last `keep` positions (0: all)."""
    captured = {}
    me = threading.get_ident()

    def keep_last_block_output(module, args, output):  # hooks are shared by every thread: keep only ours
        if threading.get_ident() == me:
            captured["last"] = output

    hook = hf.transformer.h[-1].register_forward_hook(keep_last_block_output)
    try:
        ref = hf(sequences, output_hidden_states=True, logits_to_keep=keep)
    finally:
        hook.remove()
    last = captured["last"]
    last = last[0] if isinstance(last, tuple) else last
    return list(ref.hidden_states[:-1]) + [last, ref.hidden_states[-1]], ref.logits.float()


# ---------------------------------------------------------------------------------------------------------
# HF's side: generate() as users call it, or the text-generation pipeline as the seed's author did


def _user_hf_kwargs(s: SamplingSettings, explicit_only: bool) -> dict:
    """The generate()/pipeline kwargs equivalent to our settings. For the pipeline (explicit_only), only what
    the user changed from our defaults is passed, as a person calling the pipeline would."""
    d = SamplingSettings()
    greedy = s.effective_method == "greedy"
    kw: dict = {}
    if s.max_new_tokens is not None:
        kw["max_new_tokens"] = s.max_new_tokens
    else:
        kw["max_length"] = s.max_length
    kw["num_return_sequences"] = s.num_return_sequences
    wanted = {"do_sample": not greedy}
    if not greedy:
        wanted.update(temperature=float(s.temperature), top_k=s.top_k, top_p=float(s.top_p))
    for key, value in wanted.items():
        default = {"do_sample": True, "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}[key]
        if not explicit_only or value != default:
            kw[key] = value
    return kw


def _hf_tokenizer(tokenizer: Tokenizer):
    from transformers import GPT2TokenizerFast

    files = tokenizer.files
    if files is None:
        raise ParityError("the pipeline reference needs GPT-2's vocab.json + merges.txt on disk (set GPT2_BPE_DIR)")
    return GPT2TokenizerFast(vocab=str(files[0]), merges=str(files[1]))


def run_hf_reference(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str):
    """HF's own sampling, seeded the way users do it. Returns (sequences, kwargs HF received, user kwargs)."""
    captured: dict = {}
    original = type(hf).generate.__get__(hf)  # the class's method: never another request's spy

    def spy(*args, **kwargs):  # record exactly what reaches generate() (the pipeline adds its defaults)
        captured.update({k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")})
        return original(*args, **kwargs)

    with global_rng_section():
        hf.generate = spy  # only while we hold the lock: every HF sampling call goes through this section
        try:
            if reference == "generate":
                user = _user_hf_kwargs(s, explicit_only=False)
                x = torch.tensor([prompt_ids], device=hf.device)
                torch.manual_seed(s.seed)
                out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), **user).tolist()
            else:
                from transformers import pipeline, set_seed

                if prompt_text is None:
                    raise ParityError("the pipeline reference needs a text prompt")
                user = _user_hf_kwargs(s, explicit_only=True)
                pipe = pipeline("text-generation", model=hf, tokenizer=_hf_tokenizer(tokenizer),
                                device=hf.device)
                set_seed(s.seed)
                res = pipe(prompt_text, return_tensors=True, **user)
                out = [r["generated_token_ids"] for r in res]
                out = [list(map(int, row.tolist() if hasattr(row, "tolist") else row)) for row in out]
        finally:
            del hf.generate  # back to the class's method
    return out, captured, user


_SHOWN_SETTINGS = (
    "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
    "no_repeat_ngram_size", "max_length", "max_new_tokens", "min_length", "min_new_tokens",
    "num_return_sequences", "eos_token_id", "pad_token_id",
)
# Fields that change which tokens get sampled, and their neutral value on our side.
_OURS_NEUTRAL = {"min_p": None, "typical_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                 "min_length": 0, "min_new_tokens": None}


def settings_table(hf, s: SamplingSettings, prompt_len: int, n_new: int, received: dict, user: dict,
                   eos_id: int) -> tuple[list[SettingRow], dict]:
    """Each effective generation setting of the HF side, resolved by transformers itself, with its source."""
    from transformers import GenerationConfig

    resolved, _ = hf._prepare_generation_config(None, **dict(received))
    defaults = GenerationConfig._get_default_generation_params()
    model_set = {k for k, v in hf.generation_config.to_dict().items() if v is not None}
    effective_total = prompt_len + resolved.max_new_tokens if resolved.max_new_tokens is not None else (
        resolved.max_length if resolved.max_length is not None else prompt_len + 20)
    greedy = s.effective_method == "greedy"
    ours = {
        "do_sample": not greedy,
        "temperature": float(s.temperature),
        "top_k": s.top_k if not greedy else None,
        "top_p": float(s.top_p),
        "max_length": prompt_len + n_new,
        "max_new_tokens": s.max_new_tokens,
        "num_return_sequences": s.num_return_sequences,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        **_OURS_NEUTRAL,
    }
    rows, hf_values = [], {}
    def source_of(name: str) -> str:
        if name in user:
            return "you"
        if name in received:
            return "pipeline default"
        if name in model_set:
            return "model generation_config"
        return "transformers default" if defaults.get(name) is not None else "unset"

    for name in _SHOWN_SETTINGS:
        value = getattr(resolved, name, None)
        if name == "max_length":
            value = effective_total
        if name == "pad_token_id" and value is None:
            value, source = eos_id, "generate() falls back to eos"
        elif name == "max_length" and resolved.max_new_tokens is not None:
            # the effective total is the prompt plus max_new_tokens: it comes from whoever set those
            source = f"{source_of('max_new_tokens')} (prompt + max_new_tokens)"
        else:
            source = source_of(name)
        hf_values[name] = value
        differs = _setting_differs(name, ours[name], value, greedy)
        rows.append(SettingRow(name, ours[name], value, source, differs))
    return rows, hf_values


def _setting_differs(name: str, ours, hf, greedy: bool) -> bool:
    if name == "max_new_tokens":
        return False  # compared through the effective max_length
    if greedy and name in ("temperature", "top_k", "top_p"):
        return False  # no effect without sampling
    if name == "top_k":
        return (ours or 0) != (hf or 0)
    if name in ("min_length",):
        return (ours or 0) != (hf or 0)
    if isinstance(ours, float) or isinstance(hf, float):
        return ours is None or hf is None or not math.isclose(float(ours), float(hf))
    return ours != hf


# ---------------------------------------------------------------------------------------------------------
# HF's results, cached: asking again for something already computed is nearly free. A result is keyed by
# everything that determines it (model_key + the request), held in a bounded LRU, and shared read-only.


class ResultCache:
    """A bounded, thread-safe LRU of HF's results: at most `max_entries` entries and `max_bytes` of tensors.

    Each entry holds a weak reference to the HF model it came from: a hit needs that very object alive (a new
    model that reuses a freed one's id() never matches), and entries of freed models are dropped."""

    def __init__(self, max_entries: int = 32, max_bytes: int = 256 * 2**20):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict = OrderedDict()  # key -> (weakref to the HF model, value, nbytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, hf, key):
        """The cached value for `key` computed with this very `hf` object, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is hf:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
            return None

    def put(self, hf, key, value, nbytes: int = 0) -> None:
        if self.max_entries <= 0 or nbytes > self.max_bytes:
            return  # too big to keep: computed again next time
        with self._lock:
            self._drop(key)
            self._entries[key] = (weakref.ref(hf), value, nbytes)
            self._bytes += nbytes
            for k in [k for k, e in self._entries.items() if e[0]() is None]:  # results of models since freed
                self._drop(k)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))  # least recently used first

    def _drop(self, key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes


# One cache for the process: HF reference runs (tiny: token ids and kwargs) and teacher-forced passes (residual
# stream + logits: ~30 MB for the seed's case at 124M, ~70 MB at 1.5B; bigger ones are not kept).
REFERENCE_CACHE = ResultCache()


def _json(obj) -> str:
    try:
        return obj.to_json_string(use_diff=False)
    except Exception:  # noqa: BLE001 - an exotic config: its dict still identifies it
        return repr(sorted(obj.to_dict().items()))


def model_key(hf) -> tuple:
    """What identifies HF's model as it is now: the object, every weight's storage, shape, dtype and version
    counter (bumped by in-place edits), a strided sample of its values (edits through `.data` bypass the
    counter), the config and generation config (incl. the attention implementation), and library versions."""
    import transformers

    storage, samples = [], []
    for t in [*hf.parameters(), *hf.buffers()]:
        try:
            version = t._version
        except RuntimeError:  # an inference tensor has no version counter: the sample still sees edits
            version = -1
        storage.append((t.data_ptr(), version, tuple(t.shape), str(t.dtype), str(t.device)))
        if t.is_contiguous() and t.numel():
            flat = t.detach().reshape(-1)
            samples.append(flat[:: max(1, flat.numel() // 61)].float())
    sample = torch.cat(samples).cpu().numpy().tobytes() if samples else b""
    return (
        id(hf), type(hf).__module__, type(hf).__qualname__, tuple(storage), sample, _json(hf.config),
        _json(hf.generation_config), str(getattr(hf.config, "_attn_implementation", None)),
        transformers.__version__, torch.__version__,
    )


def reference_key(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str,
                  model: tuple | None = None) -> tuple:
    """Everything that determines run_hf_reference's result. Our method and faults never reach HF: only the
    kwargs HF receives (what _user_hf_kwargs derives from the settings), the seed and the prompt do; the
    pipeline also reads the prompt text, the BPE files and its own defaults (part of transformers' version)."""
    user = _user_hf_kwargs(s, explicit_only=reference == "pipeline")
    key = ("reference", reference, model or model_key(hf), tuple(prompt_ids), tuple(sorted(user.items())), s.seed)
    if reference == "pipeline":
        files = tokenizer.files if tokenizer is not None else None
        key += (prompt_text, tuple(map(str, files)) if files else None)
    return key


def hf_reference(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str,
                 cache: ResultCache = REFERENCE_CACHE, model: tuple | None = None):
    """run_hf_reference, cached by reference_key: (sequences, kwargs HF received, user kwargs), the caller's copy."""
    key = reference_key(hf, tokenizer, prompt_text, prompt_ids, s, reference, model)
    result = cache.get(hf, key)
    if result is None:
        result = run_hf_reference(hf, tokenizer, prompt_text, prompt_ids, s, reference)
        cache.put(hf, key, copy.deepcopy(result))
    return copy.deepcopy(result)


def hf_teacher_forced_cached(hf, sequences: torch.Tensor, keep: int = 0, cache: ResultCache = REFERENCE_CACHE,
                             model: tuple | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """hf_teacher_forced, cached by the model and the token streams: the tensors are shared, read-only."""
    key = ("teacher_forced", model or model_key(hf), tuple(map(tuple, sequences.tolist())), keep, str(sequences.device))
    result = cache.get(hf, key)
    if result is None:
        result = hf_teacher_forced(hf, sequences, keep=keep)
        cache.put(hf, key, result, nbytes=sum(t.nbytes for t in result[0]) + result[1].nbytes)
    return list(result[0]), result[1]


# HF's own sampling does not depend on the model under test. With OVERLAP_REFERENCE it runs on one long-lived
# worker thread (a fresh thread per request costs torch ~25%; HF's sampling is serialised by HF_RNG_LOCK anyway)
# while the model under test generates on the caller's thread, each on its share of the cores (two OpenMP teams
# on the same cores wait on each other's preempted threads). Off by default: on the 2-core Sapphire Rapids box
# both generations run 1.9x slower on 1 thread than on 2, so side by side they took 3% longer than one after the
# other (bench/bench_compare.py). Without it, HF's reference runs on the caller's thread when it is asked for.
OVERLAP_REFERENCE = False
REFERENCE_THREADS: int | None = None  # the worker's torch threads (None: half the caller's)
_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_KEEPER: ThreadPoolExecutor | None = None


def _reference_share(n: int) -> int:
    return min(n, REFERENCE_THREADS or max(1, n // 2))


def _keep_default(n: int) -> None:
    """torch.set_num_threads sets the calling thread's count *and* the count threads started later get: put
    the latter back to `n` from a thread that runs no torch work, leaving the caller's own count as it is."""
    global _KEEPER
    with _POOL_LOCK:
        if _KEEPER is None:
            _KEEPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-threads-default")
    _KEEPER.submit(torch.set_num_threads, n).result()


def _set_own_threads(n: int) -> None:
    torch.get_num_threads()  # a thread takes the default count at its first torch call: take it before setting
    torch.set_num_threads(n)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            return _POOL
        caller = torch.get_num_threads()
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-reference",
                                   initializer=_set_own_threads, initargs=(_reference_share(caller),))
        _POOL.submit(lambda: None).result()  # the worker exists and has its share of the cores
    _keep_default(caller)
    return _POOL


@contextlib.contextmanager
def sharing_cores_with(pending: Future | None):
    """While HF's reference runs on its worker (`pending` not done), the calling thread uses the other cores."""
    n = torch.get_num_threads()
    mine = max(1, n - _reference_share(n))
    if pending is None or isinstance(pending, _Deferred) or pending.done() or mine == n:
        yield
        return
    torch.set_num_threads(mine)
    _keep_default(n)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def hf_reference_in_background(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings,
                               reference: str, cache: ResultCache = REFERENCE_CACHE,
                               model: tuple | None = None) -> Future:
    """hf_reference as a Future of (sequences, received, user, seconds on HF's side): with OVERLAP_REFERENCE
    started now beside the caller's work, else run on the caller's thread at .result(). A cache hit is answered
    here, as a finished Future (seconds 0)."""
    import time

    model = model or model_key(hf)
    key = reference_key(hf, tokenizer, prompt_text, prompt_ids, s, reference, model)
    done: Future = Future()
    hit = cache.get(hf, key)
    if hit is not None:
        done.set_result((*copy.deepcopy(hit), 0.0))
        return done

    def work():
        t = time.perf_counter()
        result = run_hf_reference(hf, tokenizer, prompt_text, prompt_ids, s, reference)
        cache.put(hf, key, copy.deepcopy(result))
        return (*result, time.perf_counter() - t)

    return _pool().submit(work) if OVERLAP_REFERENCE else _Deferred(work)


class _Deferred:
    """A Future-like that runs its work on the caller's thread when its result is first asked for."""

    def __init__(self, work):
        self._work, self._result = work, None

    def done(self) -> bool:
        return self._result is not None

    def result(self):
        if self._result is None:
            self._result = self._work()
        return self._result
