"""Any GPT-2 as a model under test: a torch.nn.Module or a callable mapping ids (B, T) to logits, driven by a
no-cache decoding loop (each step recomputes the whole sequence, as the seed's loop does), with its residual
stream recorded by forward hooks where its layout is discoverable, and optionally the user's own sampling step.

Knows the common return conventions and module layouts of GPT-2 implementations (nanoGPT, build-nanogpt,
minGPT, HF-style, Llama-style names); knows nothing about HuggingFace's side or the report.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..sampling import SamplingSettings, choose_tokens, prepare
from ..tokenizer import Tokenizer
from .reference import global_rng_section, hf_eos_id
from .report import ParityError
from .subject import StepTracker, SubjectRun


class ForeignModelError(ParityError):
    """A model under test (or its sampling step) returned something the lab cannot use; the message says what."""


# Where GPT-2 implementations keep their blocks and their final norm (first match wins).
BLOCK_PATHS = (
    "transformer.h", "h", "blocks", "layers", "model.layers", "decoder.layers", "decoder.blocks",
    "transformer.blocks", "transformer.layers", "model.decoder.layers", "model.blocks", "gpt.transformer.h",
    "model.transformer.h",
)
NORM_PATHS = (
    "transformer.ln_f", "ln_f", "norm", "final_layernorm", "final_norm", "ln_final", "model.norm", "decoder.norm",
    "decoder.ln_f", "transformer.norm", "model.final_layernorm", "model.decoder.final_layer_norm", "model.ln_f",
    "decoder.final_layernorm", "gpt.transformer.ln_f", "model.transformer.ln_f",
)


# ---------------------------------------------------------------------------------------------------------
# What the model returned -> last-position logits (B, V)


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a {out.dtype} tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(_describe(x) if isinstance(x, torch.Tensor) else type(x).__name__ for x in out[:3])
        return f"a {type(out).__name__} of {len(out)} items ({inner}{', ...' if len(out) > 3 else ''})"
    return f"an object of type {type(out).__name__}"


def _unwrapped(out):
    """The logits inside what a forward returned: itself, `out["logits"]`, `out.logits`, or the first item."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return out


def logits_from_output(out, batch: int, length: int, vocab: int) -> torch.Tensor:
    """The last position's logits (B, V') from whatever a GPT-2 forward returns: a tensor (B, T, V) or (B, 1, V)
    or (B, V); a tuple/list whose first item is that ((logits, loss)); an object or mapping with `.logits`.
    V' >= vocab (a padded vocabulary is allowed; the caller compares the first `vocab`)."""
    got = _describe(out)
    out = _unwrapped(out)
    expect = (f"expected logits of shape ({batch}, {length}, {vocab}) or ({batch}, 1, {vocab}), alone, first in a "
              "tuple such as (logits, loss), or as .logits")
    if not isinstance(out, torch.Tensor):
        raise ForeignModelError(f"your model returned {got}; {expect}")
    if not out.is_floating_point():
        raise ForeignModelError(f"your model returned {got} (logits must be floating point); {expect}")
    if out.dim() == 3:
        if out.size(1) not in (length, 1):
            raise ForeignModelError(f"your model returned logits for {out.size(1)} positions for an input of "
                                    f"{length} tokens ({got}); {expect}")
        out = out[:, -1]
    elif out.dim() != 2:
        raise ForeignModelError(f"your model returned {got}; {expect}")
    if out.size(0) != batch:
        raise ForeignModelError(f"your model returned logits for {out.size(0)} rows for an input of {batch} rows "
                                f"({got}); the batch dimension must come first")
    if out.size(-1) < vocab:
        raise ForeignModelError(f"your model returned {out.size(-1)} logits per position ({got}); GPT-2's "
                                f"vocabulary (HF's model) has {vocab}")
    return out


def _check_finite(logits: torch.Tensor, step: int) -> None:
    bad = ~torch.isfinite(logits)
    if bad.any():
        row = int(bad.any(dim=-1).nonzero()[0])
        kinds = [k for k, m in (("NaN", torch.isnan(logits)), ("inf", torch.isinf(logits))) if m.any()]
        raise ForeignModelError(f"your model returned {'/'.join(kinds)} logits at step {step} (row {row}: "
                                f"{int(bad[row].sum())} of {logits.size(-1)} values)")


# ---------------------------------------------------------------------------------------------------------
# The residual stream through forward hooks


@dataclass
class LayerTaps:
    """The modules whose outputs make the residual stream: blocks (the first one's input is the embeddings)
    and the final norm; `where` says how they were found (for the report)."""

    blocks: list[nn.Module]
    final_norm: nn.Module
    where: str


def _get(model: nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _named(model: nn.Module, spec: Mapping[str, str], key: str) -> nn.Module:
    """The module a user named in layers=dict(...), or a clear error."""
    mod = _get(model, spec[key])
    if mod is None:
        raise ParityError(f"layers: your model has no module {spec[key]!r}")
    return mod


def _as_blocks(mod) -> list[nn.Module] | None:
    if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 0:
        return list(mod)
    return None


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) or type(mod).__name__.lower().endswith("norm")


def find_layers(model, n_layer: int, spec: Mapping[str, str] | None = None) -> LayerTaps | str:
    """The blocks and final norm of `model`, named in `spec` (dict(blocks="decoder.blocks", final_norm=
    "decoder.norm")) or found on a common layout. Returns LayerTaps, or why they could not be found."""
    if not isinstance(model, nn.Module):
        return "the model is a plain function, not a torch.nn.Module: it has no modules to hook"
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {"blocks", "final_norm", "attn", "mlp"})
    if unknown:
        raise ParityError(f"layers= takes the keys 'blocks', 'final_norm', 'attn' and 'mlp', got {', '.join(unknown)}")
    if "blocks" in spec:
        mod = _named(model, spec, "blocks")
        blocks = _as_blocks(mod)
        if blocks is None:
            raise ParityError(f"layers: {spec['blocks']!r} is a {type(mod).__name__}, not a ModuleList of blocks")
        block_path = spec["blocks"]
    else:
        block_path, blocks = None, None
        for path in BLOCK_PATHS:
            blocks = _as_blocks(_get(model, path))
            if blocks is not None:
                block_path = path
                break
        if blocks is None:  # any one ModuleList with as many children as HF's model has blocks
            found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)
                     and len(m) == n_layer]
            if len(found) == 1:
                block_path, blocks = found[0][0], list(found[0][1])
        if blocks is None:
            return (f"no list of blocks found (looked for {', '.join(BLOCK_PATHS[:6])}, ... and for a single "
                    f"ModuleList of {n_layer} modules); name it with layers=dict(blocks=..., final_norm=...)")
    if len(blocks) != n_layer:
        return f"{block_path!r} holds {len(blocks)} blocks but HF's model has {n_layer}"
    if "final_norm" in spec:
        norm, norm_path = _named(model, spec, "final_norm"), spec["final_norm"]
    else:
        norm_path, norm = None, None
        for path in NORM_PATHS:
            m = _get(model, path)
            if isinstance(m, nn.Module) and not isinstance(m, (nn.ModuleList, nn.ModuleDict)):
                norm_path, norm = path, m
                break
        if norm is None:  # the one normalisation module outside the blocks
            inside = {id(m) for b in blocks for m in b.modules()}
            found = [(name, m) for name, m in model.named_modules() if _is_norm(m) and id(m) not in inside]
            if len(found) == 1:
                norm_path, norm = found[0]
        if norm is None:
            return (f"blocks found at {block_path!r} but no final norm (looked for {', '.join(NORM_PATHS[:5])}, "
                    "...); name it with layers=dict(final_norm=...)")
    return LayerTaps(blocks, norm, f"blocks {block_path!r}, final norm {norm_path!r}")


class HiddenRecorder:
    """Forward hooks recording the residual stream of the calling thread's latest forward; always removed."""

    def __init__(self, taps: LayerTaps):
        self.taps = taps
        self.latest: list[torch.Tensor | None] = [None] * (len(taps.blocks) + 2)
        self._me = threading.get_ident()

    def _put(self, i: int, value) -> None:
        if threading.get_ident() != self._me:  # hooks are shared by every thread using the model: keep ours
            return
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        self.latest[i] = value.detach() if isinstance(value, torch.Tensor) else None

    @contextlib.contextmanager
    def recording(self):
        def embeddings(module, args, kwargs):
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            self._put(0, x)

        handles = [self.taps.blocks[0].register_forward_pre_hook(embeddings, with_kwargs=True)]
        try:
            for i, block in enumerate(self.taps.blocks):
                handles.append(block.register_forward_hook(lambda m, a, out, i=i: self._put(i + 1, out)))
            handles.append(self.taps.final_norm.register_forward_hook(
                lambda m, a, out: self._put(len(self.taps.blocks) + 1, out)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def hidden(self, batch: int, length: int, width: int) -> tuple[list[torch.Tensor] | None, str | None]:
        """The recorded stream if every layer is (B, T or 1, C) as expected; else (None, why not)."""
        names = ["embeddings"] + [f"block {i}" for i in range(len(self.taps.blocks))] + ["final norm"]
        for name, h in zip(names, self.latest):
            if h is None:
                return None, f"the hook on {name} recorded no tensor (is the module called in forward()?)"
            if h.dim() != 3 or h.size(0) != batch or h.size(1) not in (length, 1) or h.size(2) != width:
                return None, (f"{name} gave shape {tuple(h.shape)}, expected ({batch}, {length}, {width}) "
                              "(batch, positions, channels)")
        return [h.float() for h in self.latest], None


# ---------------------------------------------------------------------------------------------------------
# The no-cache decoding loop


def _device_of(model) -> torch.device:
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model):
    """Run a module in eval mode (dropout off) and leave its training flag as it was."""
    if not isinstance(model, nn.Module):
        yield False
        return
    was = model.training
    model.eval()
    try:
        yield was
    finally:
        model.train(was)


@contextlib.contextmanager
def _users_rng(seed: int, device: torch.device):
    """The user's sampling step on the global RNG: seeded once, as their script does, and every global RNG
    (CPU, and the device's) left as it was afterwards; one such section at a time."""
    with global_rng_section():
        cuda = device.type == "cuda" and torch.cuda.is_available()
        cuda_state = torch.cuda.get_rng_state_all() if cuda else None
        torch.manual_seed(seed)
        try:
            yield
        finally:
            if cuda:
                torch.cuda.set_rng_state_all(cuda_state)


def _call(fn, *args, what: str):
    try:
        return fn(*args)
    except ParityError:
        raise
    except Exception as exc:  # the user's code failed: say where, keep their exception as the cause
        raise ForeignModelError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _their_ids(ids, batch: int, vocab: int, step: int, padded: int) -> torch.Tensor:
    got = _describe(ids)
    if isinstance(ids, (list, tuple)) and all(isinstance(i, int) for i in ids):
        ids = torch.tensor(ids)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
        raise ForeignModelError(f"your sampling step returned {got} at step {step}; expected integer token ids "
                                f"of shape ({batch},) or ({batch}, 1)")
    if ids.dim() == 2 and ids.size(1) == 1:
        ids = ids[:, 0]
    if tuple(ids.shape) != (batch,):
        raise ForeignModelError(f"your sampling step returned {got} at step {step}; expected ({batch},) or "
                                f"({batch}, 1)")
    bad = ((ids < 0) | (ids >= vocab)).nonzero()
    if len(bad):
        r = int(bad[0])
        extra = (f"; your model's logits have {padded} columns, the last {padded - vocab} are padding that "
                 "must never be sampled") if padded > vocab else ""
        raise ForeignModelError(f"your sampling step chose token id {int(ids[r])} for row {r} at step {step}, "
                                f"outside GPT-2's vocabulary [0, {vocab}){extra}")
    return ids.long()


@dataclass
class _Notes:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


def run_foreign(
    model,
    hf,
    prompt,
    s: SamplingSettings,
    *,
    tokenizer: Tokenizer | None = None,
    sampling_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layers: Mapping[str, str] | None = None,
    on_step=None,
    label: str = "Yours",
) -> SubjectRun:
    """Generate with any GPT-2 (`model`: ids (B, T) -> logits) under settings `s`, recomputing the whole sequence
    at every step. Tokens come from our sampler's method (explicit generator, as for our GPT) or, with
    `sampling_step`, from the user's step: last-position logits (B, V) as the model returned them -> ids (B,),
    run after torch.manual_seed(s.seed) with the caller's global RNG restored afterwards. `hf` gives the vocabulary,
    context length and layer count the model must match."""
    if not callable(model):
        raise ParityError(f"the model under test must be a torch.nn.Module or a callable ids -> logits, got "
                          f"{type(model).__name__}")
    if sampling_step is not None and not callable(sampling_step):
        raise ParityError(f"sampling_step must be a function (B, V) logits -> (B,) ids, got "
                          f"{type(sampling_step).__name__}")
    cfg = hf.config
    vocab, n_layer, width = int(cfg.vocab_size), int(cfg.n_layer), int(cfg.n_embd)
    eos = hf_eos_id(cfg)
    text, ids, n_new = prepare(hf, prompt, tokenizer, s)  # every input check before any work
    notes = _Notes()
    if sampling_step is not None:
        notes.add("tokens chosen by your own sampling step (global RNG seeded once with the seed, restored "
                  "afterwards)")
    taps = find_layers(model, n_layer, layers)
    recorder = None
    if not isinstance(taps, str) and layers and ("attn" in layers or "mlp" in layers):
        from .localise import find_sublayers

        find_sublayers(taps.blocks, layers)  # sub-layers named by the user: a wrong name is said before any work
    if isinstance(taps, str):
        notes.add(f"per-layer comparison not possible: {taps}. The per-step comparison of the logits still holds.")
    else:
        recorder = HiddenRecorder(taps)
    device = _device_of(model)
    B = s.num_return_sequences
    method = s.effective_method
    tracker = StepTracker(s, B, eos, tokenizer)
    generator = torch.Generator(device=device).manual_seed(s.seed)
    x = torch.tensor(ids, dtype=torch.long, device=device)[None].repeat(B, 1)  # (B, T), as the seed's loop
    step_logits: list[torch.Tensor] = []
    t0 = time.perf_counter()
    rng = _users_rng(s.seed, device) if sampling_step is not None else contextlib.nullcontext()
    hooks = recorder.recording() if recorder is not None else contextlib.nullcontext()
    with _eval_mode(model) as was_training, torch.no_grad(), rng, hooks:
        for step in range(n_new):
            out = _call(model, x, what=f"your model (input of shape {tuple(x.shape)}, step {step})")
            full = logits_from_output(out, B, x.size(1), vocab)  # (B, V') as the model returned it
            _check_finite(full, step)
            if full.size(-1) > vocab:
                notes.add(f"your model returns {full.size(-1)} logits per position (a padded vocabulary); the "
                          f"first {vocab}, GPT-2's tokens, are compared and sampled from; the other "
                          f"{full.size(-1) - vocab} are ignored" + (" (your sampling step still sees them)"
                                                                      if sampling_step is not None else ""))
            logits = full[:, :vocab].float()
            if sampling_step is not None:
                tokens = _their_ids(_call(sampling_step, full, what=f"your sampling step (step {step})"),
                                    B, vocab, step, full.size(-1)).to(device)
            else:
                tokens = choose_tokens(logits, s, generator, want_probs=False)[0]
            step_logits.append(logits)
            event, tokens = tracker.step(logits, tokens)
            if on_step is not None:
                on_step(event)
            if tracker.done or step == n_new - 1:
                break
            x = torch.cat([x, tokens[:, None].to(device)], dim=1)
    if was_training and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        notes.add("your model was in training mode: it ran in eval mode (dropout off) and was switched back")
    gen = tracker.generation(text, ids, time.perf_counter() - t0)
    hidden = None
    if recorder is not None:
        hidden, why = recorder.hidden(B, x.size(1), width)
        if hidden is None:
            notes.add(f"per-layer comparison not possible: {why}. The per-step comparison of the logits still "
                      "holds.")
    return SubjectRun(generation=gen, step_logits=torch.stack(step_logits, dim=1), hidden=hidden, label=label,
                      sampler="yours" if sampling_step is not None else method, notes=notes.items)


# ---------------------------------------------------------------------------------------------------------
# Teacher-forced replay: the same model on given token streams (the float32 re-check of a low-precision run)


def _full_logits(out, batch: int, length: int, vocab: int) -> torch.Tensor | None:
    """Every position's logits (B, T, V') when the model returned them all, else None (it returns the last only)."""
    out = _unwrapped(out)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() == 3 \
            and tuple(out.shape[:2]) == (batch, length) and out.size(-1) >= vocab:
        return out
    return None


def replay(model, hf, streams: list[list[int]], prompt_len: int, n_steps: int,
           layers: Mapping[str, str] | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The model on fixed token streams (B, prompt_len + n_steps), teacher-forced: its logits at each of the
    n_steps positions that chose a token, (B, n_steps, V) float32, and its residual stream over the fed positions
    where its layout is discoverable (else None). One forward over the whole streams when the model returns every
    position's logits; otherwise one per step, as its own decoding loop would."""
    cfg = hf.config
    vocab, n_layer, width = int(cfg.vocab_size), int(cfg.n_layer), int(cfg.n_embd)
    taps = find_layers(model, n_layer, layers)
    recorder = None if isinstance(taps, str) else HiddenRecorder(taps)
    device = _device_of(model)
    fed = torch.tensor(streams, dtype=torch.long, device=device)[:, : prompt_len + n_steps - 1]
    B, T = fed.shape
    hooks = recorder.recording() if recorder is not None else contextlib.nullcontext()
    with _eval_mode(model), torch.no_grad(), hooks:
        out = _call(model, fed, what=f"your model (input of shape {tuple(fed.shape)})")
        full = _full_logits(out, B, T, vocab)
        if full is not None:
            logits = full[:, prompt_len - 1 :, :vocab].float()
            hidden = recorder.hidden(B, T, width)[0] if recorder is not None else None
        else:  # last-position logits only: one call per step
            steps = []
            for t in range(n_steps):
                x = fed[:, : prompt_len + t]
                steps.append(logits_from_output(_call(model, x, what=f"your model (step {t})"), B, x.size(1),
                                                vocab)[:, :vocab].float())
            logits = torch.stack(steps, dim=1)
            hidden = recorder.hidden(B, T, width)[0] if recorder is not None else None
    return logits, hidden


def localiser_for(model, hf, run: SubjectRun, layers: Mapping[str, str] | None, p, device_type: str):
    """A Localiser (localise.py) for any module whose blocks are found, or None (why not is already in the run's
    notes: its per-layer comparison was not possible either)."""
    from .localise import Localiser, find_sublayers

    taps = find_layers(model, int(hf.config.n_layer), layers)
    if isinstance(taps, str):
        return None
    attns = find_sublayers(taps.blocks, layers)

    def forward(ids):
        with _eval_mode(model):
            return _call(model, ids, what=f"your model (input of shape {tuple(ids.shape)})")

    fed = len(run.generation.prompt_ids) + len(run.generation.records) - 1
    return Localiser(forward, taps.blocks, attns, hf, run.fed_streams, fed, p, device_type)
