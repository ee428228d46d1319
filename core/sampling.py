"""Sampling: settings, pure logits->token steps, a KV-cached decoding loop and per-step records.

Knows our GPT and a Tokenizer, never HuggingFace: the "hf" method reproduces HF `generate()` token for token
by doing what it does (processor order, full-vocab -inf filtering, one multinomial per step over the whole
batch, eos padding) with an explicit torch.Generator; global RNG state is never touched.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from .errors import ParityLabError
from .model import GPT, ContextLengthError, KVCache
from .tokenizer import Tokenizer

METHODS = ("hf", "nanogpt", "greedy")
TOP_N = 50  # how many tokens each step record keeps (the dashboard's top-50 views)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed accepts [-2**63, 2**64); we take the common part, >= 0


class SettingsError(ParityLabError, ValueError):
    """Sampling settings or a prompt that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class SamplingSettings:
    """Field names follow HF `generate()`. top_k defaults to 50 like HF's; None or 0 means no top-k filter."""

    max_new_tokens: int | None = None  # wins over max_length when both are set (as in HF)
    max_length: int | None = 30  # prompt + new tokens, HF's older knob; the seed grows rows to 30 tokens
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: int = 42
    method: str = "hf"

    @property
    def effective_method(self) -> str:
        """greedy when do_sample=False or temperature == 0, otherwise the named method."""
        if self.method == "greedy" or not self.do_sample or self.temperature == 0:
            return "greedy"
        return self.method

    def new_tokens_for(self, prompt_len: int) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is None:
            raise SettingsError("set max_new_tokens or max_length")
        n = self.max_length - prompt_len
        if n < 1:
            raise SettingsError(f"max_length={self.max_length} leaves no room after a {prompt_len}-token prompt")
        return n

    def validate(self, vocab_size: int = 50257) -> "SamplingSettings":
        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        if self.method not in METHODS:
            raise SettingsError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise SettingsError(f"{name} must be a positive integer, got {value!r}")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise SettingsError(f"num_return_sequences must be a positive integer, got {self.num_return_sequences!r}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise SettingsError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise SettingsError(f"temperature must be a number, got {self.temperature!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SettingsError(f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        if self.top_k is not None and (not is_int(self.top_k) or not 0 <= self.top_k <= vocab_size):
            raise SettingsError(f"top_k must be an integer in [1, {vocab_size}] (or 0/None for off), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise SettingsError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.effective_method == "greedy" and self.num_return_sequences > 1:
            raise SettingsError("greedy decoding gives identical rows: use num_return_sequences=1 (HF refuses too)")
        if self.method == "nanogpt" and self.top_p < 1.0:
            raise SettingsError("top_p is not part of the seed's nanogpt loop; use method='hf' for nucleus sampling")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "SamplingSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Pure steps: logits (B, V) fp32 -> processed logits -> probs -> token ids (B,)


def process_logits_hf(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """HF's warpers, in HF's order: temperature, top-k (ties with the k-th value kept), top-p; -inf filtering."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - top_p)
        sorted_remove[..., -1:] = 0  # always keep the most likely token (min_tokens_to_keep=1)
        remove = sorted_remove.scatter(1, sorted_idx, sorted_remove)
        logits = logits.masked_fill(remove, -float("inf"))
    return logits


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One torch.multinomial call for the whole batch, as HF does: (B, V) -> (B,).

    On CPU, multinomial with one sample is argmax(p / q) with q ~ Exp(1) drawn for every entry (B x V draws,
    each -log1p(-u) of a float64 uniform). Only entries with p > 0 can win, so we draw the same uniforms but
    take the log of the kept entries only: the same tokens and the same generator state, ~4x cheaper with
    top-k. `_fast_sampling_ok` checks that equivalence against torch.multinomial once per process.
    """
    if probs.device.type == "cpu" and probs.dtype == torch.float32 and _fast_sampling_ok():
        return _sample_sparse_exponential(probs, generator)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _sample_sparse_exponential(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(probs.shape, dtype=torch.float64, generator=generator)  # the uniforms exponential_ uses
    kept = probs > 0
    ratio = torch.zeros_like(probs)
    ratio[kept] = probs[kept] / (-torch.log1p(-u[kept])).to(probs.dtype)
    return ratio.argmax(dim=-1)


_FAST_SAMPLING: bool | None = None


def _fast_sampling_ok() -> bool:
    """Does the sparse path reproduce torch.multinomial bit for bit in this torch build? Checked once."""
    global _FAST_SAMPLING
    if _FAST_SAMPLING is None:
        ok = True
        for seed in range(8):
            logits = torch.randn(3, 4099, generator=torch.Generator().manual_seed(seed)) * 3
            probs = torch.softmax(logits.masked_fill(logits < logits.topk(40)[0][:, -1:], -float("inf")), dim=-1)
            g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            a = torch.multinomial(probs, 1, generator=g1).squeeze(1)
            b = _sample_sparse_exponential(probs, g2)
            ok &= torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())
        _FAST_SAMPLING = bool(ok)
    return _FAST_SAMPLING


def sample_nanogpt(
    logits: torch.Tensor, top_k: int | None, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's loop: softmax, topk(k), multinomial over the k sorted probs, gather.

    Returns (tokens (B,), the sampled-over ids (B, k), their renormalised probs (B, k)).
    """
    probs = F.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    if top_k:
        top_probs, top_idx = torch.topk(probs, min(top_k, probs.size(-1)), dim=-1)  # (B, k), sorted
    else:
        top_probs, top_idx = probs, torch.arange(probs.size(-1), device=probs.device).expand_as(probs)
    ix = torch.multinomial(top_probs, 1, generator=generator)  # (B, 1) index into the k candidates
    tokens = torch.gather(top_idx, -1, ix).squeeze(1)  # (B,)
    return tokens, top_idx, top_probs / top_probs.sum(dim=-1, keepdim=True)


def sampling_distribution(logits: torch.Tensor, s: "SamplingSettings", *, log: bool = False) -> torch.Tensor:
    """The distribution the settings' method samples from, (B, V) float logits -> (B, V): the one definition
    every part of the lab uses (the sampler's records, foreign models, the diffs, the row explanations).

    log=False: probabilities, computed exactly as the sampler draws from them (hf: HF's warpers then softmax;
    nanogpt: the seed's top-k of the softmax, renormalised; greedy: all mass on the argmax).
    log=True: log-probabilities (-inf where a filter removed a token), computed in log space so that two models'
    distributions can be compared without underflow; greedy has no spread, so its log form is the model's own
    distribution (log_softmax of the logits)."""
    method = s.effective_method
    if method == "greedy":
        if log:
            return F.log_softmax(logits, dim=-1)
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    if method == "hf":
        processed = process_logits_hf(logits, s.temperature, s.top_k, s.top_p)
        return F.log_softmax(processed, dim=-1) if log else logits_to_probs(processed)
    scaled = logits / s.temperature if s.temperature != 1.0 else logits
    if log:
        logp = F.log_softmax(scaled, dim=-1)
        if s.top_k:
            kth = torch.topk(logp, min(s.top_k, logp.size(-1)))[0][..., -1, None]
            logp = logp.masked_fill(logp < kth, -float("inf"))
            logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
        return logp
    probs = F.softmax(scaled, dim=-1)
    if not s.top_k:
        return probs
    top_probs, top_idx = torch.topk(probs, min(s.top_k, probs.size(-1)), dim=-1)
    return torch.zeros_like(probs).scatter_(1, top_idx, top_probs / top_probs.sum(dim=-1, keepdim=True))


def choose_tokens(logits: torch.Tensor, s: "SamplingSettings", generator: torch.Generator,
                  want_probs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One sampling step of the settings' method: logits (B, V) float32 -> (token ids (B,), the distribution they
    were drawn from (B, V), or None when `want_probs` is False and computing it would cost extra)."""
    method = s.effective_method
    if method == "greedy":
        tokens = torch.argmax(logits, dim=-1)
        return tokens, (F.one_hot(tokens, logits.size(-1)).to(logits.dtype) if want_probs else None)
    if method == "hf":
        probs = sampling_distribution(logits, s)
        return sample(probs, generator), probs
    tokens, cand_idx, cand_probs = sample_nanogpt(logits, s.top_k, s.temperature, generator)
    return tokens, (torch.zeros_like(logits).scatter_(1, cand_idx, cand_probs) if want_probs else None)


def stops_at_eos(s: "SamplingSettings") -> bool:
    """HF's generate() (and our hf/greedy methods) stop a row at eos; the seed's loop always grows to length."""
    return s.effective_method != "nanogpt"


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """x.sum(dim=-1) of a (rows, V) tensor, in an order that does not depend on the thread count: sums of blocks of
    1024 entries, then of those. (torch splits a one-row sum over more than 32768 entries across threads, so its
    bits would change with the thread count; every output of a many-output sum is summed by one thread.)"""
    rows, V = x.shape
    pad = (-V) % 1024
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(rows, -1, 1024).sum(dim=-1).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Records: plain data for the dashboard


@dataclass
class StepRecord:
    """One row at one step. Probabilities: `prob`/`top_sample_probs` under the sampling distribution (after
    temperature/top-k/top-p), `raw_prob`/`top_probs` under the model's softmax. Ranks are 1-based by raw logit."""

    step: int
    row: int
    token_id: int
    token: str
    prob: float
    raw_prob: float
    rank: int
    entropy: float  # nats, of the sampling distribution
    raw_entropy: float  # nats, of the model's distribution
    n_kept: int  # tokens with non-zero sampling probability
    top_ids: list[int]
    top_tokens: list[str]
    top_logits: list[float]
    top_probs: list[float]
    top_sample_probs: list[float]
    top_kept: list[bool]


def step_records(
    step: int,
    raw_logits: torch.Tensor,
    sample_probs: torch.Tensor,
    tokens: torch.Tensor,
    active: Sequence[bool],
    tokenizer: Tokenizer | None,
) -> list[StepRecord | None]:
    """Compact per-row records for one step (top-50 only; no full-vocab arrays). None for finished rows."""
    raw_logp = F.log_softmax(raw_logits, dim=-1)
    top_logits, top_ids = torch.topk(raw_logits, min(TOP_N, raw_logits.size(-1)), dim=-1)
    chosen = tokens[:, None]
    cols = {
        "top_probs": raw_logp.gather(1, top_ids).exp(),
        "top_sample_probs": sample_probs.gather(1, top_ids),
        "prob": sample_probs.gather(1, chosen)[:, 0],
        "raw_prob": raw_logp.gather(1, chosen)[:, 0].exp(),
        "rank": (raw_logits > raw_logits.gather(1, chosen)).sum(dim=-1) + 1,
        "entropy": row_sum(torch.special.entr(sample_probs)),
        "raw_entropy": -row_sum(raw_logp.exp() * raw_logp),
        "n_kept": torch.count_nonzero(sample_probs, dim=-1),
        "top_ids": top_ids,
        "top_logits": top_logits,
        "token_id": tokens,
    }
    c = {k: v.tolist() for k, v in cols.items()}
    show = tokenizer.display if tokenizer is not None else str
    out: list[StepRecord | None] = []
    for r in range(len(c["token_id"])):
        if not active[r]:
            out.append(None)
            continue
        out.append(
            StepRecord(
                step=step,
                row=r,
                token_id=c["token_id"][r],
                token=show(c["token_id"][r]),
                prob=c["prob"][r],
                raw_prob=c["raw_prob"][r],
                rank=c["rank"][r],
                entropy=max(c["entropy"][r], 0.0),
                raw_entropy=max(c["raw_entropy"][r], 0.0),
                n_kept=c["n_kept"][r],
                top_ids=c["top_ids"][r],
                top_tokens=[show(i) for i in c["top_ids"][r]],
                top_logits=c["top_logits"][r],
                top_probs=c["top_probs"][r],
                top_sample_probs=c["top_sample_probs"][r],
                top_kept=[p > 0 for p in c["top_sample_probs"][r]],
            )
        )
    return out


@dataclass
class StreamEvent:
    """One decoding step: the token each row got (eos padding for finished rows) and its records."""

    step: int
    tokens: list[int]
    finished: list[bool]
    records: list[StepRecord | None]


@dataclass
class Generation:
    """The result: HF-shaped padded `sequences`, per-row tokens/texts up to eos, and per-step records."""

    settings: dict
    prompt: str | None
    prompt_ids: list[int]
    sequences: list[list[int]]  # (B, prompt + steps), finished rows padded with eos, like HF's output
    new_token_ids: list[list[int]]  # per row, up to and including its eos
    texts: list[str]  # prompt + completion, decoded
    completions: list[str]
    finished_by_eos: list[bool]
    records: list[list[StepRecord | None]] = field(default_factory=list)  # [step][row]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        """One screen: the settings and each row's text (the per-step records are in .records)."""
        rows = [f"  [{r}] {t!r}" if len(t) <= 160 else f"  [{r}] {t[:159]!r}…" for r, t in enumerate(self.texts[:8])]
        if len(self.texts) > 8:
            rows.append(f"  ... {len(self.texts) - 8} more row(s)")
        s = self.settings
        head = (f"<Generation {len(self.texts)} row(s), method {s.get('method')}, seed {s.get('seed')}, "
                f"{len(self.records)} recorded step(s), {self.seconds:.2f} s")
        return "\n".join([head, *rows]) + ">"

    def _repr_html_(self) -> str:
        """Jupyter's view: one line per row, the prompt in grey, the settings."""
        from demo.report import generation_html

        return generation_html({k: getattr(self, k) for k in ("prompt", "completions", "finished_by_eos", "settings",
                                                                "seconds")})


# ---------------------------------------------------------------------------------------------------------
# The decoding loop


MAX_PROMPT_CHARS = 20_000  # refuse before tokenizing: no prompt that long fits GPT-2's 1024-token context anyway


def check_prompt_text(prompt: str) -> None:
    """Refuse text no tokenizer should see, each with its own message."""
    if not prompt.strip():
        raise SettingsError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SettingsError(f"the prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    if "\x00" in prompt:
        raise SettingsError("the prompt contains a NUL byte (\\x00)")
    if any("\ud800" <= ch <= "\udfff" for ch in prompt):
        raise SettingsError("the prompt contains a lone UTF-16 surrogate, which is not valid text")
    bad = sorted({f"U+{ord(ch):04X}" for ch in prompt if ch not in "\t\n\r" and unicodedata.category(ch) == "Cc"})
    if bad:
        raise SettingsError(f"the prompt contains control characters ({', '.join(bad[:5])}); only tab and newline are allowed")
    if prompt.replace("<|endoftext|>", "").strip() == "":
        raise SettingsError("the prompt is only <|endoftext|>: add some text (token-id prompts such as [50256] work in the API)")


def encode_prompt(prompt, tokenizer: Tokenizer | None) -> tuple[str | None, list[int]]:
    if isinstance(prompt, str):
        check_prompt_text(prompt)
        if tokenizer is None:
            raise SettingsError("a text prompt needs a tokenizer (or pass token ids)")
        return prompt, tokenizer.encode(prompt)
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.flatten().tolist()
    if not isinstance(prompt, (list, tuple)):
        raise SettingsError(f"the prompt must be text or a list of token ids, got {type(prompt).__name__}")
    ids = list(prompt)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise SettingsError("token-id prompts must be a non-empty list of integers")
    return None, ids


def prepare(model: GPT, prompt, tokenizer: Tokenizer | None, settings: SamplingSettings):
    """Validate everything before any work: (prompt text, prompt ids, number of new tokens)."""
    settings.validate(model.config.vocab_size)
    text, ids = encode_prompt(prompt, tokenizer)
    bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
    if bad:
        raise SettingsError(f"token ids out of range [0, {model.config.vocab_size}): {bad[:5]}")
    if len(ids) >= model.config.n_positions:
        raise ContextLengthError(
            f"the prompt is {len(ids)} tokens: longer than the model's context leaves room for "
            f"(n_positions={model.config.n_positions})"
        )
    n_new = settings.new_tokens_for(len(ids))
    if len(ids) + n_new > model.config.n_positions:
        raise ContextLengthError(
            f"prompt ({len(ids)} tokens) + {n_new} new tokens = {len(ids) + n_new} exceeds the model's context "
            f"of n_positions={model.config.n_positions}"
        )
    return text, ids, n_new


@torch.inference_mode()
def stream(model: GPT, prompt, *, tokenizer: Tokenizer | None = None, record: bool = True, **settings) -> Iterator[StreamEvent]:
    """Yield one StreamEvent per decoding step (prefill, then one token per step through the KV cache)."""
    s = SamplingSettings.from_kwargs(**settings)
    _, ids, n_new = prepare(model, prompt, tokenizer, s)
    yield from _decode(model, ids, n_new, s, tokenizer, record)


@dataclass
class Capture:
    """Tensors a decoding run can hand to the parity engine (never part of the JSON-ready records): the logits
    each step sampled from, and the residual stream at every position that was fed to the model."""

    logits: list[torch.Tensor] = field(default_factory=list)  # per step: (B, V) float32
    hidden: list[list[torch.Tensor]] = field(default_factory=list)  # per forward: n_layer + 2 of (B, T, C)

    def stacked(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, steps, V) logits and, per layer, the (B, positions, C) residual stream."""
        logits = torch.stack(self.logits, dim=1)
        hidden = [torch.cat(parts, dim=1) for parts in zip(*self.hidden)]
        return logits, hidden


def _forward(model: GPT, x: torch.Tensor, cache, capture: Capture | None) -> torch.Tensor:
    if capture is None:
        return model(x, cache, last_only=True)[:, -1].float()
    out = model(x, cache, last_only=True, return_hidden=True)
    capture.hidden.append(out.hidden)
    return out.logits[:, -1].float()


def _prefill(model: GPT, x: torch.Tensor, B: int, cache: KVCache, capture: Capture | None) -> torch.Tensor:
    """Run the prompt once and copy its keys/values to all B rows (HF repeats the prompt B times first)."""
    one = model.new_cache(1, x.size(1))
    logits = _forward(model, x, one, capture)  # (1, V)
    cache.k[:, :, :, : x.size(1)] = one.k
    cache.v[:, :, :, : x.size(1)] = one.v
    cache.pos = one.pos
    if capture is not None:
        capture.hidden[-1] = [h.expand(B, -1, -1) for h in capture.hidden[-1]]
    return logits.expand(B, -1)


def _decode(model: GPT, ids: list[int], n_new: int, s: SamplingSettings, tokenizer, record: bool,
            capture: Capture | None = None):
    device = model.device
    B = s.num_return_sequences
    eos = model.config.eos_token_id
    generator = torch.Generator(device=device).manual_seed(s.seed)
    x = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, T): every row starts from the same prompt
    cache = model.new_cache(B, len(ids) + n_new)
    unfinished = torch.ones(B, dtype=torch.long, device=device)
    stops = stops_at_eos(s)  # the seed's loop has no notion of eos: it always grows rows to length
    logits = _prefill(model, x, B, cache, capture)  # (B, V)
    for step in range(n_new):
        if capture is not None:
            capture.logits.append(logits)
        tokens, sample_probs = choose_tokens(logits, s, generator, want_probs=record)
        active = unfinished.bool().tolist()
        tokens = tokens * unfinished + eos * (1 - unfinished)  # finished rows are padded with eos (no record)
        records = step_records(step, logits, sample_probs, tokens, active, tokenizer) if record else []
        if stops:
            unfinished = unfinished & (tokens != eos).long()
        yield StreamEvent(step, tokens.tolist(), [not a for a in unfinished.bool().tolist()], records)
        if not unfinished.any() or step == n_new - 1:
            break
        logits = _forward(model, tokens[:, None], cache, capture)  # (B, V)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt,
    *,
    tokenizer: Tokenizer | None = None,
    record: bool = True,
    on_step: Callable[[StreamEvent], None] | None = None,
    capture: Capture | None = None,
    **settings,
) -> Generation:
    """Sample from our model: `prompt` is text (needs `tokenizer`) or token ids; settings as SamplingSettings.
    `on_step`, if given, sees every StreamEvent as it happens (the UI streams text with it); `capture`, if given,
    receives the logits and hidden states of the run (the parity engine compares them with HF's)."""
    s = SamplingSettings.from_kwargs(**settings)
    t0 = time.perf_counter()
    text, ids, n_new = prepare(model, prompt, tokenizer, s)
    B = s.num_return_sequences
    steps: list[StreamEvent] = []
    for event in _decode(model, ids, n_new, s, tokenizer, record, capture):
        steps.append(event)
        if on_step is not None:
            on_step(event)
    sequences = [list(ids) + [ev.tokens[r] for ev in steps] for r in range(B)]
    return assemble_generation(s, text, ids, sequences, [ev.records for ev in steps], tokenizer,
                               model.config.eos_token_id, time.perf_counter() - t0)


def assemble_generation(s: SamplingSettings, prompt_text: str | None, prompt_ids: Sequence[int],
                        sequences: list[list[int]], records: list[list[StepRecord | None]],
                        tokenizer: Tokenizer | None, eos_id: int, seconds: float = 0.0) -> Generation:
    """The one Generation assembler: HF-shaped token streams (B, prompt + steps; rows finished at eos padded with
    eos) -> per-row new tokens up to and including eos (when the method stops there), decoded texts."""
    P = len(prompt_ids)
    new_ids, done = [], []
    for seq in sequences:
        row = []
        for t in seq[P:]:
            row.append(t)
            if t == eos_id and stops_at_eos(s):
                break
        new_ids.append(row)
        done.append(bool(row) and row[-1] == eos_id and stops_at_eos(s))
    decode = tokenizer.decode if tokenizer is not None else (lambda t: "")
    return Generation(
        settings=s.to_dict(),
        prompt=prompt_text,
        prompt_ids=list(prompt_ids),
        sequences=[list(seq) for seq in sequences],
        new_token_ids=new_ids,
        texts=[decode(list(prompt_ids) + row) for row in new_ids],
        completions=[decode(row) for row in new_ids],
        finished_by_eos=done,
        records=records,
        seconds=seconds,
    )
