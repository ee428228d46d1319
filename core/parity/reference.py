"""HuggingFace's side: its own generate()/pipeline as users call them, with what its model computed on the way (the
logits of every step and the residual stream), a teacher-forced pass over any other streams, the effective settings
transformers resolved, and a cache of all of it. HF runs at the caller's thread count, bit for bit as the user's
own call would, on a worker thread beside the model under test when that side's bits do not depend on its threads.
Knows transformers, the global RNGs and what determines HF's results; knows nothing about our model.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..precision import FLOAT32, Precision, cast_copy, regime
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


@dataclass
class HFTrace:
    """What HF's model computed while its generate() ran, on HF's own token streams: the logits each sampling step
    chose from, (B, S, V) float32, and the residual stream [embeddings, each block, ln_f] at every position fed to
    the model, each (B, L-1, C). Where a stream is also ours, this is HF's side of the comparison: the same
    function of the same tokens as a teacher-forced pass, computed the way generate() computes it (KV cache)."""

    logits: torch.Tensor
    hidden: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes + sum(h.nbytes for h in self.hidden)


class _ForwardRecorder:
    """Forward hooks on HF's GPT-2 that keep, for the calling thread only (hooks are shared by every thread),
    each forward's residual stream (block 0's input, every block's output, ln_f's output) and last logits."""

    def __init__(self, hf):
        self.hf, self.me = hf, threading.get_ident()
        self.forwards: list[list[torch.Tensor]] = []
        self.logits: list[torch.Tensor] = []
        self._current: list[torch.Tensor] | None = None
        self._handles: list = []

    def _mine(self) -> bool:
        return threading.get_ident() == self.me

    def __enter__(self) -> "_ForwardRecorder":
        blocks, t = self.hf.transformer.h, self.hf.transformer

        def embeddings(module, args, kwargs):  # block 0's input: wte + wpe
            if self._mine():
                self._current = [args[0] if args else kwargs["hidden_states"]]

        def block(module, args, output):
            if self._mine() and self._current is not None:
                self._current.append(output[0] if isinstance(output, tuple) else output)

        def ln_f(module, args, output):
            if self._mine() and self._current is not None:
                self.forwards.append(self._current + [output])
                self._current = None

        def head(module, args, output):
            if self._mine():
                self.logits.append(output[:, -1].float())

        self._handles = [blocks[0].register_forward_pre_hook(embeddings, with_kwargs=True),
                         *(b.register_forward_hook(block) for b in blocks),
                         t.ln_f.register_forward_hook(ln_f), self.hf.lm_head.register_forward_hook(head)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def trace(self, sequences: list[list[int]], prompt_len: int) -> HFTrace | None:
        """The trace of the generation that produced `sequences`, or None where the recorded forwards do not fit
        it (then the engine falls back to a teacher-forced pass): forward k fed the tokens that step k sampled from."""
        B, steps = len(sequences), len(sequences[0]) - prompt_len if sequences else 0
        n_layers = len(self.hf.transformer.h) + 2
        forwards, logits = self.forwards[:steps], self.logits[:steps]  # generate() may run (and undo) extra steps
        if steps < 1 or len(forwards) != steps or len(logits) != steps:
            return None
        if any(len(f) != n_layers for f in forwards) or any(l.shape[0] != B for l in logits):
            return None
        hidden = []
        for layer in zip(*forwards):
            parts = [h.expand(B, -1, -1) if h.size(0) == 1 else h for h in layer]
            if any(h.size(0) != B for h in parts):
                return None
            hidden.append(torch.cat(parts, dim=1).float())  # (B, L-1, C)
        if hidden[0].size(1) != prompt_len + steps - 1:
            return None
        return HFTrace(torch.stack(logits, dim=1), hidden)  # (B, S, V)


def run_hf_reference(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str):
    """HF's own sampling, seeded the way users do it. Returns (sequences, kwargs HF received, user kwargs)."""
    return _run_hf_reference(hf, tokenizer, prompt_text, prompt_ids, s, reference, trace=False)[:3]


def _run_hf_reference(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str, *,
                      trace: bool):
    """run_hf_reference, and with `trace` what HF's model computed while generating (an HFTrace, or None)."""
    captured: dict = {}
    original = type(hf).generate.__get__(hf)  # the class's method: never another request's spy

    def spy(*args, **kwargs):  # record exactly what reaches generate() (the pipeline adds its defaults)
        captured.update({k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")})
        return original(*args, **kwargs)

    recorder = _ForwardRecorder(hf) if trace else contextlib.nullcontext()
    with global_rng_section():
        hf.generate = spy  # only while we hold the lock: every HF sampling call goes through this section
        try:
            with recorder:
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
    traced = None
    if trace and out and len({len(row) for row in out}) == 1 and out[0][: len(prompt_ids)] == list(prompt_ids):
        traced = recorder.trace(out, len(prompt_ids))
    return out, captured, user, traced


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


# One cache for the process: HF reference runs (token ids, kwargs and HF's trace) and teacher-forced passes (residual
# stream + logits: each ~30 MB for the seed's case at 124M, ~70 MB at 1.5B; bigger ones are not kept).
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
    return hf_reference_in_background(hf, tokenizer, prompt_text, prompt_ids, s, reference, cache, model).result()[:3]


def _keep(cache: ResultCache, hf, key, entry) -> None:
    """Cache a reference run: its lists and dicts as a private copy, its trace's tensors shared (read-only)."""
    trace = entry[3]
    cache.put(hf, key, (*copy.deepcopy(entry[:3]), trace), nbytes=trace.nbytes if trace is not None else 0)


def hf_teacher_forced_cached(hf, sequences: torch.Tensor, keep: int = 0, cache: ResultCache = REFERENCE_CACHE,
                             model: tuple | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """hf_teacher_forced, cached by the model and the token streams: the tensors are shared, read-only."""
    key = ("teacher_forced", model or model_key(hf), tuple(map(tuple, sequences.tolist())), keep, str(sequences.device))
    result = cache.get(hf, key)
    if result is None:
        result = hf_teacher_forced(hf, sequences, keep=keep)
        cache.put(hf, key, result, nbytes=sum(t.nbytes for t in result[0]) + result[1].nbytes)
    return list(result[0]), result[1]


def hf_on_streams(hf, sequences: torch.Tensor, prompt_len: int, n_steps: int, ref_sequences, trace: HFTrace | None,
                  model: tuple | None = None) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """HF's side of a comparison on the token streams `sequences` (B, prompt_len + n_steps): its residual stream
    at every fed position, each (B, prompt_len + n_steps - 1, C), and its logits for the n_steps sampling steps,
    (B, n_steps, V). A row whose fed tokens are those of HF's own row (`ref_sequences`) takes what HF's generate()
    computed for it (`trace`); the other rows get one teacher-forced pass (cached by their streams).
    Returns (hidden, logits, number of rows teacher-forced)."""
    B = sequences.size(0)
    fed = prompt_len + n_steps - 1  # the last sampled token is never fed to the model
    reuse = [False] * B
    if (trace is not None and ref_sequences is not None and len(ref_sequences) == B and n_steps >= 1
            and trace.logits.size(1) >= n_steps and trace.hidden[0].size(1) >= fed):
        ours = sequences[:, :fed].tolist()
        reuse = [len(theirs) >= fed and list(theirs[:fed]) == mine for theirs, mine in zip(ref_sequences, ours)]
    redo = [r for r in range(B) if not reuse[r]]
    if not redo:
        return [h[:, :fed] for h in trace.hidden], trace.logits[:, :n_steps], 0
    # the fed tokens only: their last n_steps positions predicted the steps (the last sampled token is never fed)
    tf_hidden, tf_logits = hf_teacher_forced_cached(hf, sequences[redo, :fed], keep=n_steps, model=model)
    if len(redo) == B:
        return tf_hidden, tf_logits, B
    rows = torch.tensor(redo, device=tf_logits.device)
    hidden = [h[:, :fed].to(t.dtype).index_copy(0, rows, t) for h, t in zip(trace.hidden, tf_hidden)]
    return hidden, trace.logits[:, :n_steps].index_copy(0, rows, tf_logits), len(redo)


# ---------------------------------------------------------------------------------------------------------
# HF's own sampling does not depend on the model under test, so it can run beside it: on one long-lived worker
# thread (a fresh thread per request costs torch ~25%; HF's sampling is serialised by HF_RNG_LOCK anyway) while the
# model under test generates on the caller's thread. HF keeps the caller's full thread count there: MKL splits a
# decode step's 2-16-row products across threads, so HF's bits (and, at a near-tie, its tokens) depend on the
# thread count, and the reference must be what the user's own call gives. The model under test gets a share of the
# cores beside it (the cores are oversubscribed for a while) and all of them once HF is done: allowed only when its
# bits do not depend on its thread count (core.model.thread_invariant()), so the report is the serial one exactly.
# On the 2-core AMD EPYC box: HF 1.2x faster on 2 threads than on 1, ours 1.5x; side by side the pair took
# 2.13-2.17 s against 2.45-2.59 s one after the other (bench/bench_compare.py). OVERLAP_REFERENCE = False turns it
# off; no setting turns it on for a subject whose bits depend on its thread count.
OVERLAP_REFERENCE = True
SUBJECT_THREADS: int | None = None  # the subject's torch threads while HF runs beside it (None: half the caller's)
_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_KEEPER: ThreadPoolExecutor | None = None


def overlap_reference(subject_thread_invariant: bool) -> bool:
    """Run HF's reference beside a model under test whose bits do (or do not) depend on its thread count?"""
    return OVERLAP_REFERENCE and subject_thread_invariant and torch.get_num_threads() > 1


def _subject_share(n: int) -> int:
    return min(n, SUBJECT_THREADS or max(1, n // 2))


def _keep_default(n: int) -> None:
    """torch.set_num_threads sets the calling thread's count *and* the count threads started later get: put
    the latter back to `n` from a thread that runs no torch work, leaving the caller's own count as it is."""
    global _KEEPER
    with _POOL_LOCK:
        if _KEEPER is None:
            _KEEPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-threads-default")
    _KEEPER.submit(torch.set_num_threads, n).result()


def _use_threads(n: int) -> None:
    torch.get_num_threads()  # a thread takes the default count at its first torch call: take it before setting
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-reference")
    return _POOL


class sharing_cores_with(contextlib.AbstractContextManager):
    """While HF's reference runs on its worker (`pending` not done), the calling thread uses its share of the
    cores; poll() hands all of them back as soon as HF is done (call it between steps)."""

    def __init__(self, pending: Future | None):
        self.pending = pending
        self.n = torch.get_num_threads()
        self.shared = False

    def __enter__(self) -> "sharing_cores_with":
        p = self.pending
        mine = _subject_share(self.n)
        if p is not None and not isinstance(p, _Deferred) and not p.done() and mine < self.n:
            torch.set_num_threads(mine)
            _keep_default(self.n)
            self.shared = True
        return self

    def poll(self) -> None:
        if self.shared and self.pending.done():
            torch.set_num_threads(self.n)
            self.shared = False

    def __exit__(self, *exc) -> None:
        if self.shared:
            torch.set_num_threads(self.n)
            self.shared = False


def hf_reference_in_background(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings,
                               reference: str, cache: ResultCache = REFERENCE_CACHE,
                               model: tuple | None = None, overlap: bool = False) -> Future:
    """hf_reference (with its HFTrace) as a Future of (sequences, received, user, seconds on HF's side, trace):
    with `overlap` started now on the worker beside the caller's work, else run on the caller's thread at
    .result(); either way at the caller's thread count. A cache hit is answered here, as a finished Future
    (seconds 0). The trace's tensors are shared with the cache: read-only."""
    import time

    model = model or model_key(hf)
    key = reference_key(hf, tokenizer, prompt_text, prompt_ids, s, reference, model)
    done: Future = Future()
    hit = cache.get(hf, key)
    if hit is not None:
        done.set_result((*copy.deepcopy(hit[:3]), 0.0, hit[3]))
        return done
    threads = torch.get_num_threads()

    def work():
        _use_threads(threads)  # the worker runs HF as the caller would: at the caller's thread count
        t = time.perf_counter()
        entry = _run_hf_reference(hf, tokenizer, prompt_text, prompt_ids, s, reference, trace=True)
        _keep(cache, hf, key, entry)
        return (*entry[:3], time.perf_counter() - t, entry[3])

    if not overlap:
        return _Deferred(work)
    return _pool().submit(work)


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


# ---------------------------------------------------------------------------------------------------------
# HF's half of one comparison, as one object: what the judge receives (HFRun) and how it is obtained (HFSide)


def hf_eos_id(config) -> int:
    """The eos id of an HF config (an int, a list of them, or None), as every part of the lab reads it."""
    eos = config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return int(eos) if isinstance(eos, int) else 50256


def mlp_width(config) -> int:
    return int(config.n_inner or 4 * config.n_embd)


@dataclass
class HFRun:
    """What HF did, for the judge: its own generation (None when its sampling is not compared), the settings it
    resolved, and what its model computed on the *subject's* token streams.

    logits: (B, S, V) float32, the logits of each of the subject's sampling steps.
    hidden: the residual stream over every fed position, [embeddings, block 0 .. n-1, ln_f], each (B, T, C);
        None when it is not known (a reference exported without layers).
    """

    sequences: list[list[int]] | None
    settings_table: list[SettingRow]
    logits: torch.Tensor
    hidden: list[torch.Tensor] | None
    n_layer: int
    mlp_width: int
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # below float32: HF's own error at the subject's precision (HF in that regime against HF in float32 on the same
    # streams), max over channels at each place: per layer (B, T) like `hidden`, and per step (B, S) like `logits`
    own_error_hidden: list[torch.Tensor] | None = None
    own_error_logits: torch.Tensor | None = None
    # HF's residual stream after each block's attention, (B, T, C) per block, where it was exported (result files)
    resid_mid: list[torch.Tensor] | None = None


_LOW_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def hf_in_regime(hf, p: Precision):
    """HF's model for regime `p`: a cast copy (kept while `hf` lives) for bfloat16/float16 weights, else itself."""
    if not p.weights_cast:
        return hf
    copies = _LOW_COPIES.setdefault(hf, {})
    if p.dtype not in copies:
        copies.clear()  # one low-precision copy per model at a time
        copies[p.dtype] = cast_copy(hf, p.dtype).eval()
    return copies[p.dtype]


def hf_own_error(hf, fed: torch.Tensor, keep: int, p: Precision, hidden32: list[torch.Tensor],
                 logits32: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """HF's own error at precision `p` on the token streams `fed` (B, T): HF run in that regime against HF in float32
    (`hidden32`, `logits32` for the last `keep` positions), max over channels at each place."""
    from .diffs import own_error

    device = next(hf.parameters()).device
    with regime(p, device.type):
        hidden, logits = hf_teacher_forced(hf_in_regime(hf, p), fed, keep=keep)
    return [own_error(a, b) for a, b in zip(hidden, hidden32)], own_error(logits, logits32)


class HFSide:
    """HF's half of one comparison. Started before the subject runs (its sampling depends on nothing of the
    subject's): from the cache, deferred to the caller's thread, or, with `beside`, on the worker beside the
    subject's generation (see sharing_cores()). on_streams() then gives the judge an HFRun for the subject's streams.
    All thread and cache plumbing of HF's side stays behind this object."""

    def __init__(self, hf, tokenizer: Tokenizer | None, prompt_text, prompt_ids, s: SamplingSettings,
                 reference: str, *, beside: bool = False, cache: ResultCache | None = None):
        self.hf, self.tokenizer, self.s, self.reference = hf, tokenizer, s, reference
        self.prompt_ids = list(prompt_ids)
        self.key = model_key(hf)
        self.cache = cache if cache is not None else REFERENCE_CACHE
        self.pending = None
        if reference != "logits":
            self.pending = hf_reference_in_background(hf, tokenizer, prompt_text, self.prompt_ids, s, reference,
                                                      self.cache, self.key, overlap=beside)

    def sharing_cores(self) -> "sharing_cores_with":
        """While HF runs beside the caller, the caller works on its share of the cores; poll() between steps."""
        return sharing_cores_with(self.pending)

    def on_streams(self, streams: list[list[int]], n_steps: int, precision: Precision = FLOAT32) -> HFRun:
        """HF's own sampling (waited for) and its model on the subject's token streams (B, prompt + n_steps); below
        float32 also HF's own error at that precision on the same streams."""
        device = next(self.hf.parameters()).device
        with regime(FLOAT32, device.type):  # HF's side is float32 itself: no TF32 matmuls, no caller's autocast
            return self._on_streams(streams, n_steps, precision, device)

    def _on_streams(self, streams, n_steps: int, precision: Precision, device) -> HFRun:
        import time

        timings, ref, table, trace = {}, None, [], None
        P = len(self.prompt_ids)
        if self.pending is not None:
            t = time.perf_counter()
            ref, received, user, timings["hf_reference_s"], trace = self.pending.result()  # 0 s when cached
            timings["hf_reference_wait_s"] = time.perf_counter() - t
            table, _ = settings_table(self.hf, self.s, P, self.s.new_tokens_for(P), received, user,
                                      hf_eos_id(self.hf.config))
        # from HF's own generate() where a row's stream is HF's, teacher-forced for the other rows
        t = time.perf_counter()
        with torch.inference_mode():
            hidden, logits, recomputed = hf_on_streams(self.hf, torch.tensor(streams, device=device), P, n_steps,
                                                       ref, trace, self.key)
        timings["teacher_forced_rows"] = float(recomputed)
        timings["teacher_forced_s"] = time.perf_counter() - t
        cfg = self.hf.config
        run = HFRun(sequences=ref, settings_table=table, logits=logits, hidden=hidden, n_layer=int(cfg.n_layer),
                    mlp_width=mlp_width(cfg), timings=timings)
        if precision.low:
            t = time.perf_counter()
            fed = torch.tensor(streams, device=device)[:, : P + n_steps - 1]
            run.own_error_hidden, run.own_error_logits = hf_own_error(self.hf, fed, n_steps, precision, hidden,
                                                                      logits)
            timings["hf_own_error_s"] = time.perf_counter() - t
        return run
