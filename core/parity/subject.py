"""The model under test: what the engine needs from *any* implementation once it has generated (a SubjectRun),
and how to build one from our GPT, from token ids + logits (a foreign sampling step, a dumped result), or
(foreign.py) from any module or callable. Knows our sampler's pure steps; knows nothing about HuggingFace.

The judge (judge.py) compares a SubjectRun with HF's run and never asks which kind of model made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..sampling import (
    METHODS,
    Capture,
    Generation,
    SamplingSettings,
    StepRecord,
    StreamEvent,
    assemble_generation,
    generate,
    sampling_distribution,
    step_records,
    stops_at_eos,
)
from ..precision import FLOAT32, Precision
from ..tokenizer import Tokenizer

# What made the tokens of a run (SubjectRun.sampler): one of our methods (explicit torch.Generator), or
# "yours": a sampling step the user wrote, on the global RNG, whose draws nobody can replay.
SAMPLERS = (*METHODS, "yours")


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
    streams: the token streams step_logits and hidden were computed on, when they are not the generation's own
        sequences (a result file's model is run on HF's streams, its own sampled rows beside them); None: its own.
        The generation's records are on these streams.
    precision: the regime the run is judged in (asked, declared by a result file, or detected); float32 keeps the
        float32 rule.
    ran_in: what the model was observed to run in, where that contradicts an explicitly asked float32 (or, for a
        result file, a declared one: precision.how says which).
    float32: below float32, the same model re-run in float32 on the same streams (or why it could not be).
    ran_in_fix: how to have such a run judged at the precision it ran in, where compare()'s precision= argument is
        not how (a result file's manifest); None: that argument.
    resid_mid: the residual stream after each block's attention over the fed positions, one (B, T, C) per block,
        when the run carries it (a result file's caseN.resid_mid); a model object is read by the judge's Localiser.
    """

    generation: Generation
    step_logits: torch.Tensor
    hidden: list[torch.Tensor] | None
    label: str = "Ours"
    sampler: str = "hf"
    notes: list[str] = field(default_factory=list)
    streams: list[list[int]] | None = None
    precision: Precision = FLOAT32
    ran_in: Precision | None = None
    float32: "Recheck | None" = None
    ran_in_fix: str | None = None
    resid_mid: list[torch.Tensor] | None = None  # after each block's attention, (B, T, C) each (a result file's)

    @property
    def fed_streams(self) -> list[list[int]]:
        """The token streams the model under test was run on."""
        return self.streams if self.streams is not None else self.generation.sequences


@dataclass
class Recheck:
    """A model under test that ran below float32, re-run in float32 (a float32 copy, autocast and TF32 off) on the
    same token streams: its residual stream and step logits as in a SubjectRun; or `why_not`, why it could not be."""

    step_logits: torch.Tensor | None = None
    hidden: list[torch.Tensor] | None = None
    why_not: str | None = None
    # where the model's weights came in rounded (bfloat16/float16): HF with the same rounded weights, in float32, as
    # the re-check's reference, and a sentence saying so
    ref_hidden: list[torch.Tensor] | None = None
    ref_logits: torch.Tensor | None = None
    note: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Step records from logits + chosen ids (a foreign sampling step or a dump gives ids only)


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
            records = step_records(step, logits, sampling_distribution(logits, self.s), tokens, active,
                                   self.tokenizer)
        ids = tokens.tolist()
        if stops_at_eos(self.s):
            self.unfinished = [u and t != self.eos for u, t in zip(self.unfinished, ids)]
        event = StreamEvent(step, ids, [not u for u in self.unfinished], records)
        self.events.append(event)
        return event, tokens

    def generation(self, prompt_text: str | None, prompt_ids: Sequence[int], seconds: float = 0.0) -> Generation:
        """The steps so far as a Generation, shaped exactly as core.sampling.generate() returns it."""
        B = len(self.unfinished)
        sequences = [list(prompt_ids) + [ev.tokens[r] for ev in self.events] for r in range(B)]
        return assemble_generation(self.s, prompt_text, prompt_ids, sequences, [ev.records for ev in self.events],
                                   self.tokenizer, self.eos, seconds)


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
    return tracker.generation(prompt_text, prompt_ids, seconds)


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
