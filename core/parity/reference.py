"""HuggingFace's side: its teacher-forced residual stream, its own generate()/pipeline as users call them, and the
effective settings transformers resolved. Knows transformers and the global RNGs; knows nothing about our model.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading

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


