"""The model under test: what the engine needs from *any* implementation once it has generated (a SubjectRun),
and how to build one from our GPT, from token ids + logits (a foreign sampling step, a dumped result), or
(foreign.py) from any module or callable. Knows our sampler's pure steps; knows nothing about HuggingFace.

The engine (engine.compare_run) compares a SubjectRun with HF and never asks which kind of model made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..sampling import (
    Capture,
    Generation,
    SamplingSettings,
    StepRecord,
    StreamEvent,
    generate,
    step_records,
)
from ..tokenizer import Tokenizer

# What made the tokens of a run (SubjectRun.sampler): one of our methods (explicit torch.Generator), or
# "yours": a sampling step the user wrote, on the global RNG, whose draws nobody can replay.
SAMPLERS = ("hf", "nanogpt", "greedy", "yours")


@dataclass
class SubjectRun:
    """Everything the engine needs from a model under test after it generated.

    generation: token streams (HF-shaped: prompt + steps, finished rows padded with eos) and per-step records.
    step_logits: (B, S, V) float32, the logits each sampling step chose from (V = HF's vocabulary).
    hidden: the residual stream over every fed position, [embeddings, block 0 .. n-1, ln_f], each (B, T, C)
        (a layer may hold the last position only: (B, 1, C)); None when it could not be recorded.
    label: how the UI and messages name this side ("Ours", "Yours", "Result file").
    sampler: which sampler chose the tokens (SAMPLERS).
    notes: plain sentences for the report (why per-layer comparison was not possible, a padded vocabulary...).
    """

    generation: Generation
    step_logits: torch.Tensor
    hidden: list[torch.Tensor] | None
    label: str = "Ours"
    sampler: str = "hf"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Step records from logits + chosen ids (a foreign sampling step or a dump gives ids only)


def sampling_probs(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The distribution `s` says to sample from, (B, V) float logits -> (B, V) probabilities, exactly as our
    sampler's methods build it: hf = HF's warpers; nanogpt = the seed's top-k of the softmax, renormalised;
    greedy = all mass on the argmax."""
    from ..sampling import logits_to_probs, process_logits_hf

    method = s.effective_method
    if method == "greedy":
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    if method == "hf":
        return logits_to_probs(process_logits_hf(logits, s.temperature, s.top_k, s.top_p))
    probs = F.softmax(logits / s.temperature if s.temperature != 1.0 else logits, dim=-1)
    if not s.top_k:
        return probs
    top_probs, top_idx = torch.topk(probs, min(s.top_k, probs.size(-1)), dim=-1)
    return torch.zeros_like(probs).scatter_(1, top_idx, top_probs / top_probs.sum(dim=-1, keepdim=True))


def stops_at_eos(s: SamplingSettings) -> bool:
    """HF's generate() (and our hf/greedy methods) stop a row at eos; the seed's loop always grows to length."""
    return s.effective_method != "nanogpt"


class StepTracker:
    """Turns one step's (logits, chosen ids) into a StreamEvent: eos padding of finished rows, records."""

    def __init__(self, s: SamplingSettings, batch_size: int, eos_id: int, tokenizer: Tokenizer | None,
                 record: bool = True):
        self.s, self.eos, self.tokenizer, self.record = s, eos_id, tokenizer, record
        self.unfinished = [True] * batch_size
        self.events: list[StreamEvent] = []

    @property
    def done(self) -> bool:
        return not any(self.unfinished)

    def step(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[StreamEvent, torch.Tensor]:
        """logits (B, V) float32 and chosen ids (B,) -> (the event, the eos-padded ids actually appended)."""
        step = len(self.events)
        active = list(self.unfinished)
        mask = torch.tensor(active, device=tokens.device)
        tokens = torch.where(mask, tokens, torch.full_like(tokens, self.eos))
        records: list[StepRecord | None] = []
        if self.record:
            records = step_records(step, logits, sampling_probs(logits, self.s), tokens, active, self.tokenizer)
        ids = tokens.tolist()
        if stops_at_eos(self.s):
            self.unfinished = [u and t != self.eos for u, t in zip(self.unfinished, ids)]
        event = StreamEvent(step, ids, [not u for u in self.unfinished], records)
        self.events.append(event)
        return event, tokens


def assemble_generation(s: SamplingSettings, prompt_text: str | None, prompt_ids: Sequence[int],
                        events: list[StreamEvent], tokenizer: Tokenizer | None, seconds: float = 0.0) -> Generation:
    """StreamEvents -> a Generation shaped exactly as core.sampling.generate() returns it."""
    B = len(events[0].tokens) if events else s.num_return_sequences
    sequences = [list(prompt_ids) + [ev.tokens[r] for ev in events] for r in range(B)]
    new_ids, done = [], []
    for r in range(B):
        row = []
        for ev in events:
            row.append(ev.tokens[r])
            if ev.finished[r]:
                break
        new_ids.append(row)
        done.append(bool(events) and events[len(row) - 1].finished[r])
    decode = tokenizer.decode if tokenizer is not None else (lambda t: "")
    return Generation(
        settings=s.to_dict(), prompt=prompt_text, prompt_ids=list(prompt_ids), sequences=sequences,
        new_token_ids=new_ids, texts=[decode(list(prompt_ids) + row) for row in new_ids],
        completions=[decode(row) for row in new_ids], finished_by_eos=done,
        records=[ev.records for ev in events], seconds=seconds,
    )


def build_generation(s: SamplingSettings, prompt_text: str | None, prompt_ids: Sequence[int],
                     new_tokens: torch.Tensor, step_logits: torch.Tensor, *, eos_id: int = 50256,
                     tokenizer: Tokenizer | None = None, seconds: float = 0.0) -> Generation:
    """A Generation (with its step records) from chosen ids (B, S) and the logits they were chosen from
    (B, S, V), as a foreign sampling step or a dumped result gives them. Rows finished at eos are padded with
    eos from there on (whatever the ids say), as HF's generate() pads them."""
    if new_tokens.dim() != 2 or step_logits.dim() != 3 or tuple(new_tokens.shape) != tuple(step_logits.shape[:2]):
        raise ValueError(f"new_tokens (B, S) and step_logits (B, S, V) disagree: {tuple(new_tokens.shape)} vs "
                         f"{tuple(step_logits.shape)}")
    tracker = StepTracker(s, new_tokens.size(0), eos_id, tokenizer)
    for t in range(new_tokens.size(1)):
        tracker.step(step_logits[:, t].float(), new_tokens[:, t].long())
        if tracker.done:
            break
    return assemble_generation(s, prompt_text, prompt_ids, tracker.events, tokenizer, seconds)


# ---------------------------------------------------------------------------------------------------------
# Our GPT as a subject: its KV-cached sampler, logits and residual stream captured while generating


def run_ours(model, prompt, s: SamplingSettings, *, tokenizer: Tokenizer | None = None,
             on_step: Callable[[StreamEvent], None] | None = None, label: str = "Ours") -> SubjectRun:
    """Generate with our GPT (or a bug-lab copy of it), capturing what the engine compares."""
    capture = Capture()
    gen = generate(model, prompt, tokenizer=tokenizer, on_step=on_step, capture=capture, **s.to_dict())
    step_logits, hidden = capture.stacked()
    return SubjectRun(generation=gen, step_logits=step_logits, hidden=hidden, label=label,
                      sampler=s.effective_method)
