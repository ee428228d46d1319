"""Parity by data exchange: HF's reference dumped to files, a result computed by any implementation read back and
judged by the same judge as compare() (judge.py): a SubjectRun and an HFRun built from the files.

Knows the dump format (docs/dump-format.md: safetensors tensors + a JSON manifest), how to validate an untrusted
result before loading a byte of tensor data, and how to export HF's side (and, for results below float32, HF's own
error at their precision); knows nothing about the UI or the CLI. A result is only ever *data*: nothing in it is
executed, and it cannot be re-run (in float32 or otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ParityLabError
from ..precision import PRECISIONS, Precision, PrecisionError
from ..precision import parse as parse_precision
from ..sampling import SamplingSettings, assemble_generation
from .diffs import ATOL, PRECISION_FACTOR, relative_tolerance
from .judge import judge
from .reference import HFRun, hf_eos_id
from .report import ParityReport, SettingRow
from .subject import Recheck, SubjectRun

FORMAT = "gpt2-parity-dump"
VERSION = 1
METADATA_KEY = "gpt2_parity_dump"  # the result's manifest, as JSON, in the safetensors header's __metadata__
REFERENCE_TENSORS = "reference.safetensors"
REFERENCE_MANIFEST = "manifest.json"
RESULT_TEMPLATE = "result_template.json"
SUBJECT = "Result file"  # how reports and the dashboard name the side under test

# Limits for reading untrusted files (the dashboard passes a smaller max_bytes).
MAX_RESULT_BYTES = 4 << 30
MAX_HEADER_BYTES = 4 << 20
MAX_CASES = 64
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
INT_DTYPES = {"I64": torch.int64, "I32": torch.int32}
SAMPLERS = ("torch", "other")  # "torch": sampled ids drawn as torch.multinomial under the case's seed (HF's draws)
IMPLEMENTATION_KEYS = ("name", "framework", "dtype", "notes")  # a result's free-text description of itself
TOLERANCE_RULE = ("each (row, position) against its own scale: a layer differs if, at some row and position, "
                  "max over channels |yours - HF| > rtol * max over channels |HF| + atol there; the logits likewise "
                  "per step and row (max over the vocabulary)")  # core/parity/diffs.py, as the reference states it
# Below float32 a result is judged against HF's own error at its precision, exported with the reference: per case
# and precision, caseN.own_error.<precision>.logits (B, S) and, with layers, caseN.own_error.<precision>.hidden
# (n_layer + 2, B, T - 1): max over channels of |HF in that regime - HF in float32| at each place.
PRECISION_RULE = ("below float32, each place also tolerates factor * max(HF's own error there at the result's "
                  "precision, its layer's median relative own error * max over channels |HF| there)")
LOW_PRECISIONS = tuple(p for p in PRECISIONS if p != "float32")
STORED = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # logits dtype -> its name
_STORED_REGIME = {"float64": "float32", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class DumpError(ParityLabError, ValueError):
    """A reference or result file that cannot be used: the message says which file, which tensor and why."""


# ---------------------------------------------------------------------------------------------------------
# What a case is and where its tensors live


@dataclass
class Case:
    """One prompt under one seed and settings: HF generate()'s token streams and the logits that produced them."""

    name: str  # tensor-name prefix: "case0", "case1", ...
    prompt: str | None
    prompt_ids: list[int]
    settings: dict  # SamplingSettings fields (method "hf" or "greedy"; seed included)

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "prompt_ids": self.prompt_ids, "settings": self.settings}


def tensor_specs(case: Case, rows: int, length: int, config: dict, layers: bool) -> dict[str, dict]:
    """name -> {dtype, shape, required, what} for one case of a result (the reference has tokens/logits/hidden).
    caseN.hidden is listed only when the reference has it (`layers`): there is nothing to compare it with otherwise."""
    P, n, C, V = len(case.prompt_ids), config["n_layer"], config["n_embd"], config["vocab_size"]
    S = length - P
    max_len = P + SamplingSettings(**case.settings).new_tokens_for(P)
    specs = {
        f"{case.name}.tokens": dict(dtype="I64", shape=[rows, length], required=True,
                                    what="the token streams you ran your model on (copied from the reference)"),
        f"{case.name}.logits": dict(dtype="F32", shape=[rows, S, V], required=True,
                                    what=f"logits of tokens[:, :-1] at positions {P - 1}..{length - 2}"),
        f"{case.name}.hidden": dict(dtype="F32", shape=[n + 2, rows, length - 1, C], required=False,
                                    what="residual stream [embeddings, block 0..n-1 output, ln_f output] at "
                                         "every position of tokens[:, :-1]"),
        f"{case.name}.resid_mid": dict(dtype="F32", shape=[n, rows, length - 1, C], required=False,
                                       what="residual stream after each block's attention (the block's input plus "
                                            "its attention's output) at every position of tokens[:, :-1]"),
        f"{case.name}.sampled": dict(dtype="I64", shape=[rows, f"{P + 1}..{max_len}"], required=False,
                                     what="your own generation from prompt_ids under the case's settings and seed, "
                                          "rows padded with eos after they end"),
    }
    if not layers:
        del specs[f"{case.name}.hidden"], specs[f"{case.name}.resid_mid"]
    return specs


# ---------------------------------------------------------------------------------------------------------
# The reference: HF's side, exported


@dataclass
class Reference:
    """A loaded (or freshly exported) reference: its manifest and its tensors (CPU, float32/int64)."""

    manifest: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def id(self) -> str:
        return self.manifest["reference_id"]

    @property
    def cases(self) -> list[Case]:
        return [Case(c["name"], c["prompt"], c["prompt_ids"], c["settings"]) for c in self.manifest["cases"]]

    @property
    def config(self) -> dict:
        return self.manifest["model"]["config"]

    @property
    def precisions(self) -> list[str]:
        """The precisions below float32 at which the reference holds HF's own error (float32 needs none)."""
        return list(self.manifest.get("precisions", []))

    def own_error(self, case: str, precision: str) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """HF's own error at `precision` in case `case`: per layer [(B, T - 1)] (None without layers), and per step
        (B, S). The precision must be one the reference was exported with (see require_precision)."""
        hidden = self.tensors.get(own_error_name(case, precision, "hidden"))
        logits = self.tensors[own_error_name(case, precision, "logits")].float()
        return (list(hidden.float().unbind(0)) if hidden is not None else None), logits

    def result_template(self) -> dict:
        """What a result must contain: its manifest (to put in the safetensors metadata) and its tensors."""
        tensors = {}
        for case in self.cases:
            rows, length = self.tensors[f"{case.name}.tokens"].shape
            tensors.update(tensor_specs(case, rows, length, self.config, self.manifest["layers"]))
        note = ("Write these tensors into one .safetensors file with json.dumps(manifest) under the header's "
                f"__metadata__[{METADATA_KEY!r}] (fill in 'implementation'); see docs/dump-format.md.")
        if self.precisions:
            note += (f" A result below float32 ({', '.join(self.precisions)} here) adds \"precision\" to its manifest, "
                     "or stores its logits in that dtype (BF16, F16).")
        return {"manifest": result_manifest(self), "metadata_key": METADATA_KEY, "tensors": tensors, "note": note}


def own_error_name(case: str, precision: str, what: str) -> str:
    """The reference's tensor of HF's own error: caseN.own_error.<precision>.logits or .hidden."""
    return f"{case}.own_error.{precision}.{what}"


def model_config(hf_config) -> dict:
    c = hf_config
    return {
        "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.n_positions,
        "vocab_size": c.vocab_size, "mlp_width": c.n_inner or 4 * c.n_embd,
        "layer_norm_epsilon": c.layer_norm_epsilon, "activation_function": c.activation_function,
        "eos_token_id": hf_eos_id(c),
    }


def reference_id(model: str, config: dict, cases: list[Case], tokens: dict[str, torch.Tensor]) -> str:
    """A fingerprint of what a result is judged against: the model, the cases and HF's token streams."""
    blob = json.dumps({"model": model, "config": config, "cases": [c.to_dict() for c in cases],
                       "tokens": {k: v.tolist() for k, v in sorted(tokens.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_cases(prompts, tokenizer, seeds: list[int], **settings) -> list[Case]:
    """prompts (texts or token-id lists) x seeds -> cases, each validated as compare() would."""
    from ..sampling import encode_prompt

    cases = []
    for prompt in prompts:
        text, ids = encode_prompt(prompt, tokenizer)
        for seed in seeds:
            s = SamplingSettings.from_kwargs(**{**settings, "seed": seed})
            s.validate()
            if s.effective_method == "nanogpt":
                raise DumpError("the reference is HF generate(): use method 'hf' or 'greedy'")
            cases.append(Case(f"case{len(cases)}", text, list(ids), s.to_dict()))
    if not cases:
        raise DumpError("no prompts to export")
    if len(cases) > MAX_CASES:
        raise DumpError(f"{len(cases)} cases (prompts x seeds); the limit is {MAX_CASES}")
    return cases


def export_precisions(names) -> list[str]:
    """The precisions asked of an export (names or their usual aliases: bf16, fp16, ...) -> the checked names below
    float32, in order, each once (float32 needs no export of its own: it is always judged). A string is a comma
    list."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = []
    for name in names or ():
        try:
            p = parse_precision(name)
        except PrecisionError:
            p = None
        if p is None or p == "auto":
            raise DumpError(f"export precision must be one of {', '.join(LOW_PRECISIONS)} (float32 is always "
                            f"judged), got {name!r}")
        if p != "float32" and p not in out:
            out.append(p)
    return out


@torch.inference_mode()
def export_reference(hf, cases: list[Case], *, model: str, layers: bool = False, tokenizer=None,
                     precisions=(), on_case=None) -> Reference:
    """HF's side of every case: generate() as users call it (the token streams), then one teacher-forced forward
    over those streams for the logits at the positions that predicted each new token (and the residual stream).
    For each of `precisions` (below float32) also HF's own error there: HF run in that regime on the same streams
    against HF in float32, max over channels at each place (reference.hf_own_error, as compare() computes it).
    The reference_id does not depend on the precisions: a result is made for the same streams either way.
    `on_case(case)` is called after each case (progress)."""
    from .localise import block_readings
    from .reference import hf_own_error, hf_teacher_forced, run_hf_reference

    config = model_config(hf.config)
    lows = [Precision(p) for p in export_precisions(precisions)]
    device = next(hf.parameters()).device
    if any(p.name == "tf32" for p in lows) and device.type != "cuda":
        raise DumpError(f"precision tf32 changes nothing on a {device.type} device (TF32 is a CUDA matmul mode): "
                        "export it with HF's model on a CUDA device")
    tensors: dict[str, torch.Tensor] = {}
    for case in cases:
        s = SamplingSettings(**case.settings)
        P = len(case.prompt_ids)
        if P + s.new_tokens_for(P) > config["n_positions"]:
            raise DumpError(f"{case.name}: prompt + new tokens exceed the model's context ({config['n_positions']})")
        seqs, _, _ = run_hf_reference(hf, tokenizer, case.prompt, case.prompt_ids, s, "generate")
        tokens = torch.tensor(seqs, dtype=torch.long)
        x = tokens[:, :-1].to(hf.device)
        hidden, logits = hf_teacher_forced(hf, x, keep=tokens.size(1) - P)
        tensors[f"{case.name}.tokens"] = tokens
        tensors[f"{case.name}.logits"] = logits.float().cpu().contiguous()
        if layers:
            tensors[f"{case.name}.hidden"] = torch.stack([h.float().cpu() for h in hidden]).contiguous()
            blocks = list(hf.transformer.h)
            with torch.inference_mode():
                mids, _ = block_readings(lambda ids: hf(ids, use_cache=False), blocks, [b.attn for b in blocks], x)
            tensors[f"{case.name}.resid_mid"] = torch.stack([m.cpu() for m in mids]).contiguous()
        for p in lows:
            own_hidden, own_logits = hf_own_error(hf, x, tokens.size(1) - P, p, hidden, logits)
            tensors[own_error_name(case.name, p.name, "logits")] = own_logits.float().cpu().contiguous()
            if layers:
                tensors[own_error_name(case.name, p.name, "hidden")] = torch.stack(
                    [h.float().cpu() for h in own_hidden]).contiguous()
        if on_case is not None:
            on_case(case)
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": "reference",
        "model": {"id": model, "config": config},
        "tokenizer": {"name": "gpt2", "eos_token_id": config["eos_token_id"]},
        "producer": _producer(),
        "layers": bool(layers),
        "cases": [c.to_dict() for c in cases],
        "tolerance": {"rtol": relative_tolerance(config["mlp_width"]), "atol": ATOL, "rule": TOLERANCE_RULE},
        "tensors": {k: {"dtype": _dtype_name(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
    }
    if lows:  # a reference without precisions stays exactly as it always was
        manifest["precisions"] = [p.name for p in lows]
        manifest["tolerance"]["precision"] = {"factor": PRECISION_FACTOR, "rule": PRECISION_RULE}
    manifest["reference_id"] = reference_id(model, config, cases, {k: v for k, v in tensors.items()
                                                                   if k.endswith(".tokens")})
    return Reference(manifest, tensors)


def _producer() -> dict:
    import transformers

    return {"name": "GPT-2 Parity Lab", "torch": torch.__version__, "transformers": transformers.__version__}


def _dtype_name(dtype: torch.dtype) -> str:
    return {**{v: k for k, v in FLOAT_DTYPES.items()}, **{v: k for k, v in INT_DTYPES.items()}}[dtype]


def save_reference(ref: Reference, out_dir: str | os.PathLike) -> dict[str, Path]:
    """DIR/manifest.json, DIR/reference.safetensors, DIR/result_template.json."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"manifest": out / REFERENCE_MANIFEST, "tensors": out / REFERENCE_TENSORS,
             "template": out / RESULT_TEMPLATE}
    save_file(ref.tensors, str(paths["tensors"]), metadata={METADATA_KEY: json.dumps(ref.manifest)})
    paths["manifest"].write_text(json.dumps(ref.manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["template"].write_text(json.dumps(ref.result_template(), indent=1, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
    return paths


def load_reference(path: str | os.PathLike) -> Reference:
    """A reference directory written by save_reference (or its reference.safetensors alone)."""
    p = Path(path)
    tensors_path = p / REFERENCE_TENSORS if p.is_dir() else p
    if not tensors_path.is_file():
        raise DumpError(f"no reference at {str(path)!r}: expected a directory with {REFERENCE_TENSORS} "
                        "(written by `python -m core.parity export`)")
    manifest, tensors = _read_checked(tensors_path, "reference", MAX_RESULT_BYTES, None)
    _check_manifest(manifest, "reference", "the reference")
    for case in manifest["cases"]:
        _check_case_tensors(manifest, case, tensors, "the reference", reference=True)
    return Reference(manifest, tensors)


# ---------------------------------------------------------------------------------------------------------
# A result: written by any implementation, read back with every check before and after loading


def result_manifest(ref: Reference, implementation: dict | None = None, sampler: str = "other",
                    precision: str | None = None) -> dict:
    """A result's manifest for `ref`: reference_id, model, layers and cases copied unchanged (docs/dump-format.md).
    Without `implementation`, its fields are left empty for the writer to fill in (a result must name itself).
    `precision`: the regime the result ran in, declared (left out: its logits' dtype says)."""
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": "result",
        "reference_id": ref.id,
        "model": ref.manifest["model"],
        "layers": ref.manifest["layers"],
        "cases": ref.manifest["cases"],
        "implementation": implementation or {k: "" for k in IMPLEMENTATION_KEYS},
        "sampler": sampler,
    }
    if precision is not None:
        manifest["precision"] = precision
    return manifest


def save_result(path: str | os.PathLike, manifest: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={METADATA_KEY: json.dumps(manifest)})
    return Path(path)


@dataclass
class Result:
    manifest: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def precision(self) -> "ResultPrecision":
        return result_precision(self.manifest, {c["name"]: _dtype_name(self.tensors[f"{c['name']}.logits"].dtype)
                                                for c in self.manifest["cases"]})


@dataclass(frozen=True)
class ResultPrecision:
    """The regime a result is judged in (declared in its manifest, or detected from its logits' dtype), and what its
    logits say it ran in where that contradicts a declared float32 (judged by the float32 rule all the same)."""

    judged: Precision
    stored_as: Precision | None = None


def result_precision(manifest: dict, logits_dtypes: dict[str, str]) -> ResultPrecision:
    """A result's precision from its (checked) manifest and its caseN.logits dtypes (safetensors names, case ->
    dtype): the manifest's "precision" when given, else what the logits are stored as (BF16 -> bfloat16, F16 ->
    float16, F32/F64 -> float32; one dtype for every case)."""
    stored = {case: STORED[d] for case, d in logits_dtypes.items() if d in STORED}
    low = sorted({v for v in stored.values() if _STORED_REGIME[v] != "float32"})
    declared = manifest.get("precision")
    if declared is not None:
        p = Precision(declared, "declared in the result's manifest")
        if p.name == "float32" and low:
            return ResultPrecision(p, Precision(low[0], f"your logits are stored as {low[0]}"))
        return ResultPrecision(p)
    regimes = {_STORED_REGIME[v] for v in stored.values()}
    if len(regimes) > 1:
        each = ", ".join(f"{case} {logits_dtypes[case]}" for case in sorted(stored, key=lambda c: int(c[4:])))
        raise DumpError(f"the result's logits are stored in dtypes of different precisions ({each}): declare the "
                        f"precision it ran in as \"precision\" in its manifest (one of {', '.join(PRECISIONS)})")
    name = next(iter(stored.values()), "float32")
    return ResultPrecision(Precision(_STORED_REGIME[name], f"detected: your logits are stored as {name}"))


def require_precision(ref: Reference, p: Precision) -> None:
    """A result below float32 needs HF's own error at its precision in the reference: never the float32 rule."""
    if p.low and p.name not in ref.precisions:
        has = f"only at {', '.join(ref.precisions)}" if ref.precisions else "at no precision below float32"
        raise DumpError(f"the result is in {p.label} ({p.how}), but the reference holds HF's own error {has}: "
                        f"re-export it with `python -m core.parity export ... --precision {p.name}` (same model, "
                        "prompts, seeds and settings: the reference_id stays the same, so this result needs no "
                        "change), or write a float32 result")


def read_header(path: Path, max_bytes: int, what: str = "the file") -> dict:
    """The safetensors header (JSON) with the size checks that come before any parsing of tensor data."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DumpError(f"{what} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    if size < 8:
        raise DumpError(f"{what} is not a safetensors file: shorter than its 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise DumpError(f"{what} is not a safetensors file, or is truncated: its first 8 bytes announce a "
                            f"{n:,}-byte header, but {size - 8:,} bytes follow")
        if n > MAX_HEADER_BYTES:
            # the length fits the file: a real header if it looks like one (JSON object), else garbage
            first = f.read(1)
            f.seek(8 + n - 1)
            last = f.read(1)
            if first == b"{" and last in b"} \t\r\n":
                raise DumpError(f"{what}'s safetensors header is {n / 2**20:.1f} MiB, over the limit of "
                                f"{MAX_HEADER_BYTES >> 20} MiB (the manifest and the tensor list must be smaller)")
            raise DumpError(f"{what} is not a safetensors file: its first 8 bytes announce a {n:,}-byte header, "
                            "which does not hold a JSON object")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DumpError(f"{what} is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise DumpError(f"{what} is not a safetensors file: its header is not a JSON object")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end != size:
        raise DumpError(f"{what} is truncated or padded: its safetensors header describes {8 + n + end:,} bytes, "
                        f"the file has {size:,}")
    return header


def _read_checked(path: Path, kind: str, max_bytes: int, manifest_override: dict | None):
    """Header, manifest and tensors of a dump file; every tensor's dtype, shape and values checked."""
    from safetensors import SafetensorError, safe_open

    read_header(path, max_bytes, f"the {kind} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if manifest_override is not None:
                manifest = manifest_override
            elif METADATA_KEY in meta:
                manifest = _parse_manifest_json(meta[METADATA_KEY], f"the {kind} file's metadata")
            else:
                raise DumpError(f"the {kind} file has no manifest: put it as JSON in the safetensors metadata under "
                                f"{METADATA_KEY!r} (or give the manifest as a separate JSON file)")
            _check_manifest(manifest, kind, f"the {kind}")
            info = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
            _check_specs(manifest, info, kind)
            tensors = {k: f.get_tensor(k) for k in info}
    except SafetensorError as exc:
        raise DumpError(f"not a valid safetensors file: {exc}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            n_bad = int((~torch.isfinite(t)).sum())
            raise DumpError(f"tensor {name!r} has {n_bad} NaN/Inf values")
    return manifest, tensors


def _parse_manifest_json(text: str, where: str) -> dict:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DumpError(f"{where}: the manifest is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict):
        raise DumpError(f"{where}: the manifest must be a JSON object")
    return manifest


def _check_manifest(m: dict, kind: str, where: str) -> None:
    if m.get("format") != FORMAT:
        raise DumpError(f"{where}: not a {FORMAT} manifest (format {m.get('format')!r})")
    if m.get("version") != VERSION:
        raise DumpError(f"{where}: format version {m.get('version')!r}; this lab reads version {VERSION}")
    if m.get("kind") != kind:
        raise DumpError(f"{where}: a {m.get('kind')!r} manifest where a {kind!r} was expected")
    cases = m.get("cases")
    if not isinstance(cases, list) or not cases or len(cases) > MAX_CASES:
        raise DumpError(f"{where}: 'cases' must be a list of 1 to {MAX_CASES} cases")
    for i, c in enumerate(cases):
        if not isinstance(c, dict) or not {"name", "prompt", "prompt_ids", "settings"} <= set(c):
            raise DumpError(f"{where}: case {i} must have name, prompt, prompt_ids and settings")
        if c["name"] != f"case{i}":
            raise DumpError(f"{where}: case {i} must be named 'case{i}', got {c['name']!r}")
        ids = c["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                           for t in ids):
            raise DumpError(f"{where}: {c['name']}.prompt_ids must be a non-empty list of token ids")
        if not isinstance(c["settings"], dict):
            raise DumpError(f"{where}: {c['name']}.settings must be an object")
        try:
            s = SamplingSettings.from_kwargs(**c["settings"]).validate()
            s.new_tokens_for(len(ids))
        except ParityLabError as exc:
            raise DumpError(f"{where}: {c['name']}.settings: {exc}") from None
    if kind == "result":
        _check_result_keys(m, where)
    else:
        lows = m.get("precisions", [])
        if not isinstance(lows, list) or len(set(map(str, lows))) != len(lows) or any(
                p not in LOW_PRECISIONS for p in lows):
            raise DumpError(f"{where}: 'precisions' must list distinct names among {', '.join(LOW_PRECISIONS)}, got "
                            f"{lows!r:.100}")


def _check_result_keys(m: dict, where: str) -> None:
    """The keys a result adds to (or copies from) the reference's manifest, by form: what they must equal is
    check_result_against's business."""
    if not isinstance(m.get("reference_id"), str) or not m["reference_id"]:
        raise DumpError(f"{where}: 'reference_id' is missing: copy it from the reference's manifest")
    model = m.get("model")
    if not (isinstance(model, str) and model) and not (
            isinstance(model, dict) and isinstance(model.get("id"), str) and model["id"]
            and isinstance(model.get("config"), dict)):
        raise DumpError(f"{where}: 'model' must be the reference's model, copied unchanged "
                        f"({{\"id\": ..., \"config\": {{...}}}}, or its id alone as a string), got {model!r:.200}")
    if not isinstance(m.get("layers"), bool):
        raise DumpError(f"{where}: 'layers' must be true or false, copied unchanged from the reference's manifest, "
                        f"got {m.get('layers')!r:.50}")
    impl = m.get("implementation")
    if not isinstance(impl, dict) or not isinstance(impl.get("name"), str) or not impl["name"].strip():
        raise DumpError(f"{where}: 'implementation' must name your implementation: an object with a non-empty "
                        f"\"name\" (and optionally \"framework\", \"dtype\", \"notes\"), got {impl!r:.200}")
    bad = [k for k in IMPLEMENTATION_KEYS if impl.get(k) is not None and not isinstance(impl[k], str)]
    if bad:
        raise DumpError(f"{where}: implementation.{bad[0]} must be a string, got {impl[bad[0]]!r:.100}")
    if m.get("sampler", "other") not in SAMPLERS:
        raise DumpError(f"{where}: 'sampler' must be one of {', '.join(SAMPLERS)}, got {m.get('sampler')!r}")
    if m.get("precision") is not None and m["precision"] not in PRECISIONS:
        raise DumpError(f"{where}: 'precision' must be one of {', '.join(PRECISIONS)} (or left out: the logits' dtype "
                        f"then says), got {m['precision']!r:.50}")


def result_model_id(manifest: dict) -> str:
    """The model a (checked) result manifest is for: `model` as the spec writes it ({"id", "config"}, copied from
    the reference) or the bare id string that earlier writers wrote."""
    model = manifest["model"]
    return model["id"] if isinstance(model, dict) else model


def _check_specs(manifest: dict, info: dict[str, tuple[str, list[int]]], kind: str) -> None:
    """Names, dtypes and shapes from the header alone, before any tensor is read."""
    names = {c["name"] for c in manifest["cases"]}
    ndims = {"tokens": 2, "sampled": 2, "logits": 3, "hidden": 4, "resid_mid": 4}
    own = {}  # a reference's HF own error at each of its precisions
    if kind == "reference":
        for p in manifest.get("precisions", []):
            own[f"own_error.{p}.logits"] = 2
            if manifest.get("layers"):
                own[f"own_error.{p}.hidden"] = 3
    for name, (dtype, shape) in info.items():
        prefix, _, suffix = name.partition(".")
        if prefix not in names or suffix not in {**ndims, **own}:
            raise DumpError(f"unexpected tensor {name!r} in the {kind}: expected caseN.tokens, caseN.logits, "
                            "caseN.hidden, caseN.resid_mid or caseN.sampled"
                            + (", or caseN.own_error.<precision>.logits/.hidden for a precision the manifest lists"
                               if kind == "reference" else ""))
        allowed = INT_DTYPES if suffix in ("tokens", "sampled") else FLOAT_DTYPES
        if dtype not in allowed:
            raise DumpError(f"tensor {name!r} has dtype {dtype}; expected one of {', '.join(allowed)}")
        ndim = {**ndims, **own}[suffix]
        if len(shape) != ndim:
            raise DumpError(f"tensor {name!r} has shape {shape}; expected {ndim} dimensions")
    for case in manifest["cases"]:
        for suffix in ("tokens", "logits", *own):
            if f"{case['name']}.{suffix}" not in info:
                raise DumpError(f"the {kind} lacks tensor {case['name']}.{suffix}")


def _check_case_tensors(manifest: dict, case: dict, tensors: dict, where: str, reference: bool = False,
                        config: dict | None = None) -> None:
    """Shapes that depend on each other (rows, length, vocab, layers) and token id ranges."""
    config = config or manifest["model"]["config"]
    n, C, V = config["n_layer"], config["n_embd"], config["vocab_size"]
    name, P = case["name"], len(case["prompt_ids"])
    tokens = tensors[f"{name}.tokens"]
    B, T = tokens.shape
    S = T - P
    s = SamplingSettings(**case["settings"])
    if B != s.num_return_sequences:
        raise DumpError(f"{where}: {name}.tokens has {B} rows; the case asks for {s.num_return_sequences}")
    if not 1 <= S <= s.new_tokens_for(P):
        raise DumpError(f"{where}: {name}.tokens has length {T}: expected the {P}-token prompt plus 1 to "
                        f"{s.new_tokens_for(P)} new tokens")
    expect = {f"{name}.logits": [B, S, V], f"{name}.hidden": [n + 2, B, T - 1, C],
              f"{name}.resid_mid": [n, B, T - 1, C]}
    for p in manifest.get("precisions", []) if reference else ():
        expect[own_error_name(name, p, "logits")] = [B, S]
        expect[own_error_name(name, p, "hidden")] = [n + 2, B, T - 1]
    for key, shape in expect.items():
        if key in tensors and list(tensors[key].shape) != shape:
            raise DumpError(f"{where}: tensor {key!r} has shape {list(tensors[key].shape)}; expected {shape}")
    for key in expect:
        if ".own_error." in key and key in tensors and (tensors[key] < 0).any():
            raise DumpError(f"{where}: {key} holds negative values (an error is a magnitude)")
    for key in (f"{name}.tokens", f"{name}.sampled"):
        if key in tensors:
            t = tensors[key]
            if t.numel() and not (0 <= int(t.min()) and int(t.max()) < V):
                raise DumpError(f"{where}: {key} holds token ids outside [0, {V})")
    if f"{name}.sampled" in tensors:
        sampled = tensors[f"{name}.sampled"]
        if sampled.size(0) != B or not P < sampled.size(1) <= P + s.new_tokens_for(P):
            raise DumpError(f"{where}: tensor {name + '.sampled'!r} has shape {list(sampled.shape)}; expected "
                            f"[{B}, {P + 1}..{P + s.new_tokens_for(P)}]")
        if (sampled[:, :P] != torch.tensor(case["prompt_ids"])).any():
            raise DumpError(f"{where}: {name}.sampled does not start with the case's prompt_ids")
    if reference and not torch.equal(tokens[:, :P], torch.tensor(case["prompt_ids"]).expand(B, P)):
        raise DumpError(f"{where}: {name}.tokens does not start with the case's prompt_ids")


def _read_manifest_file(manifest_path) -> dict:
    mp = Path(manifest_path)
    if not mp.is_file() or mp.stat().st_size > MAX_HEADER_BYTES:
        raise DumpError(f"the manifest file is missing or larger than {MAX_HEADER_BYTES >> 20} MiB")
    try:
        text = mp.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DumpError("the manifest file is not UTF-8 text") from None
    return _parse_manifest_json(text, "the manifest file")


def peek_result_manifest(path: str | os.PathLike, *, manifest_path=None, max_bytes: int = MAX_RESULT_BYTES) -> dict:
    """A result's manifest from the safetensors header alone (no tensor read), checked for format and cases: what
    a server needs to know which reference to build before it reads anything else."""
    p = Path(path)
    if not p.is_file():
        raise DumpError("no result file given")
    header = read_header(p, max_bytes, "the result file")
    if manifest_path is not None:
        manifest = _read_manifest_file(manifest_path)
    else:
        meta = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
        if METADATA_KEY not in meta:
            raise DumpError(f"the result file has no manifest: put it as JSON in the safetensors metadata under "
                            f"{METADATA_KEY!r} (or give the manifest as a separate JSON file)")
        manifest = _parse_manifest_json(str(meta[METADATA_KEY]), "the result file's metadata")
    _check_manifest(manifest, "result", "the result")
    return manifest


def peek_result_precision(path: str | os.PathLike, manifest: dict, *, max_bytes: int = MAX_RESULT_BYTES) -> Precision:
    """The precision a result is judged in, from its (peeked) manifest and its header's logits dtypes alone (no
    tensor read): which of HF's own errors a server must compute for it."""
    header = read_header(Path(path), max_bytes, "the result file")
    dtypes = {}
    for c in manifest["cases"]:
        entry = header.get(f"{c['name']}.logits")
        if isinstance(entry, dict) and isinstance(entry.get("dtype"), str):
            dtypes[c["name"]] = entry["dtype"]
    return result_precision(manifest, dtypes).judged


def load_result(path: str | os.PathLike, reference: Reference, *, manifest_path: str | os.PathLike | None = None,
                max_bytes: int = MAX_RESULT_BYTES) -> Result:
    """Read a result written by any implementation, checking it against `reference` before and after loading."""
    p = Path(path)
    if not p.is_file():
        raise DumpError(f"no result file at {str(path)!r}")
    override = _read_manifest_file(manifest_path) if manifest_path is not None else None
    manifest, tensors = _read_checked(p, "result", max_bytes, override)
    check_result_against(manifest, tensors, reference)
    return Result(manifest, tensors)


def check_result_against(manifest: dict, tensors: dict, ref: Reference) -> None:
    """Is this result made for this reference: the model, the cases (every one of them), shapes, the very same
    token streams, and finally the same reference_id? Each refusal names what differs."""
    _check_same_model(manifest, ref)
    _check_same_cases(manifest, ref)
    layers = ref.manifest["layers"]
    if manifest["layers"] != layers:
        raise DumpError(f"the result's manifest says layers: {json.dumps(manifest['layers'])}; the reference's says "
                        f"{json.dumps(layers)}: copy it unchanged (your caseN.hidden is optional either way)")
    for case in ref.manifest["cases"]:
        name = case["name"]
        _check_case_tensors(manifest, case, tensors, "the result", config=ref.config)
        ours, theirs = tensors[f"{name}.tokens"], ref.tensors[f"{name}.tokens"]
        if list(ours.shape) != list(theirs.shape):
            raise DumpError(f"the result's {name}.tokens has shape {list(ours.shape)}; the reference's is "
                            f"{list(theirs.shape)}")
        bad = (ours.long() != theirs).nonzero()
        if len(bad):
            r, t = bad[0].tolist()
            raise DumpError(f"the result's {name}.tokens do not match the reference's: first at row {r}, position "
                            f"{t} ({int(ours[r, t])} vs {int(theirs[r, t])}); run your model on the reference's "
                            "token ids, do not re-tokenize the prompt")
        if f"{name}.resid_mid" in tensors and f"{name}.resid_mid" not in ref.tensors:
            raise DumpError(f"the result holds {name}.resid_mid, but its reference has no residual stream inside the "
                            "blocks to compare it with: leave caseN.resid_mid out, or check against a reference "
                            "exported with --layers by this version")
        if f"{name}.hidden" in tensors and not layers:
            raise DumpError(f"the result holds {name}.hidden, but its reference has no hidden states to compare it "
                            "with (layers: false): leave caseN.hidden out, or check against a reference exported "
                            "with --layers")
    if manifest["reference_id"] != ref.id:
        raise DumpError(f"this result was made for another reference: their reference_ids differ (the result's "
                        f"{manifest['reference_id']!r:.40}, this reference's {ref.id!r}) though the model, cases and "
                        "token streams match: check it against the reference it was made for, or copy this "
                        "reference's reference_id unchanged")
    require_precision(ref, Result(manifest, tensors).precision.judged)


def _check_same_model(manifest: dict, ref: Reference) -> None:
    """`model` as the spec writes it ({"id", "config"}, equal to the reference's) or as the bare id string."""
    ref_model, model = ref.manifest["model"], manifest["model"]
    model_id = result_model_id(manifest)
    if model_id != ref_model["id"]:
        raise DumpError(f"this result is for model {model_id!r}; the reference is for {ref_model['id']!r}")
    if isinstance(model, dict):
        config = model["config"]
        for key in sorted(set(ref_model["config"]) | set(config)):
            if config.get(key, "(missing)") != ref_model["config"].get(key, "(missing)"):
                raise DumpError(f"this result is for another {model_id!r} than the reference's: its model.config."
                                f"{key} is {config.get(key, '(missing)')!r:.40}, the reference's is "
                                f"{ref_model['config'].get(key, '(missing)')!r:.40}")


def _check_same_cases(manifest: dict, ref: Reference) -> None:
    """Every case of the reference, in order, with the same prompt, prompt_ids and settings (copied unchanged)."""
    ours, theirs = manifest["cases"], ref.manifest["cases"]
    if len(ours) != len(theirs):
        names = [c["name"] for c in (theirs[len(ours):] if len(ours) < len(theirs) else ours[len(theirs):])]
        what = (f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} missing" if len(ours) < len(theirs)
                else f"the reference has no {', '.join(names)}")
        raise DumpError(f"the result covers {len(ours)} case(s), the reference {len(theirs)}: {what}. A result holds "
                        "every case of its reference, with the reference's cases copied unchanged into its manifest")
    for y, r in zip(ours, theirs):
        name, differs = r["name"], None
        if y["prompt_ids"] != r["prompt_ids"]:
            differs = f"{name}.prompt_ids are {_short(y['prompt_ids'])}, the reference's {_short(r['prompt_ids'])}"
        else:
            ys, rs = SamplingSettings(**y["settings"]).to_dict(), SamplingSettings(**r["settings"]).to_dict()
            key = next((k for k in rs if ys[k] != rs[k]), None)
            if key is not None:
                differs = f"{name}.settings.{key} is {ys[key]!r}, the reference's is {rs[key]!r}"
            elif y["prompt"] != r["prompt"]:
                differs = f"{name}.prompt is {y['prompt']!r:.60}, the reference's is {r['prompt']!r:.60}"
        if differs:
            raise DumpError(f"this result was made for other prompts or settings than this reference's: {differs}. "
                            "Copy the reference's cases unchanged, or check against the reference it was made for")


def _short(ids: list) -> str:
    return json.dumps(ids) if len(ids) <= 12 else json.dumps(ids[:12])[:-1] + f", ... ({len(ids)} ids)]"


# ---------------------------------------------------------------------------------------------------------
# Judging a result: the same diffs, causes and verdict as compare()


@dataclass
class DumpCheck:
    """One ParityReport per case, and whether every case agrees."""

    reference_id: str
    implementation: dict
    agree: bool
    reports: list[ParityReport]

    def to_dict(self) -> dict:
        return {"reference_id": self.reference_id, "implementation": self.implementation, "agree": self.agree,
                "cases": [r.to_dict() for r in self.reports]}

    def cases_described(self) -> list[str]:
        out = []
        for i, r in enumerate(self.reports):
            prompt = repr(r.prompt) if r.prompt is not None else f"{len(r.prompt_ids)} token ids"
            s = r.settings
            out.append(f"case{i}: prompt {prompt}, {s['effective_method'] if 'effective_method' in s else s['method']}"
                       f", seed {s['seed']}, {len(r.rows)} row(s)")
        return out


def compare_dump(reference, result, *, tokenizer=None, manifest=None, max_bytes: int = MAX_RESULT_BYTES) -> DumpCheck:
    """Judge a result file against a reference: `reference` a directory or a Reference, `result` a path or a Result
    (`manifest`: an optional separate manifest JSON file). The same judge as compare(): same verdicts and causes."""
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    res = result if isinstance(result, Result) else load_result(result, ref, manifest_path=manifest,
                                                                  max_bytes=max_bytes)
    if tokenizer is None:
        tokenizer = _default_tokenizer()
    reports = [judge_case(ref, res, case, tokenizer) for case in ref.cases]
    impl = res.manifest.get("implementation") or {}
    return DumpCheck(ref.id, impl if isinstance(impl, dict) else {"name": str(impl)},
                     all(r.agree for r in reports), reports)


def _default_tokenizer():
    from ..tokenizer import load_tokenizer

    try:
        return load_tokenizer(None)
    except ParityLabError:
        return None  # texts stay empty; every number is still compared


def subject_run(ref: Reference, res: Result, case: Case, tokenizer) -> SubjectRun:
    """The result's side of one case: its logits (and residual stream) on the reference's token streams, and its
    own sampled rows where it has them (their texts; the records stay on the streams its logits were computed on)."""
    from .subject import build_generation

    config, name, P = ref.config, case.name, len(case.prompt_ids)
    eos = config["eos_token_id"]
    s = SamplingSettings(**case.settings)
    tokens = ref.tensors[f"{name}.tokens"]
    logits = res.tensors[f"{name}.logits"].float()
    gen = build_generation(s, case.prompt, case.prompt_ids, tokens[:, P:], logits, eos_id=eos, tokenizer=tokenizer)
    impl = res.manifest.get("implementation") if isinstance(res.manifest.get("implementation"), dict) else {}
    described = ", ".join(str(impl[k]) for k in ("name", "framework", "dtype", "notes") if impl.get(k))
    notes = [f"result file: {described or 'no implementation named'}; per-step views are on the reference's "
             "token streams (your model teacher-forced on HF's tokens)"]
    hidden = res.tensors.get(f"{name}.hidden")
    if hidden is None:
        notes.append("per-layer comparison not possible: the result has no hidden states")
    sampled = res.tensors.get(f"{name}.sampled")
    sampler, streams = s.effective_method, None
    if sampled is not None:
        streams = tokens.tolist()
        if res.manifest.get("sampler", "other") != "torch":
            sampler = "yours"  # draws that are not torch's cannot be replayed: judged as the user's own sampler's
        gen = assemble_generation(s, case.prompt, case.prompt_ids, sampled.long().tolist(), gen.records, tokenizer,
                                  eos)
    else:
        notes.append("no sampled ids in the result: the models are compared, the sampling is not")
    prec = res.precision
    p, ran_in = prec.judged, prec.stored_as
    recheck = Recheck(why_not="a result file cannot be re-run in float32: also write a float32 result to see faults "
                              f"smaller than {p.label}'s resolution") if p.low else None
    fix = (f"declare \"precision\": \"{ran_in.name}\" in the result's manifest (or leave it out: the logits' dtype "
           "then decides)") if ran_in is not None else None
    mid = res.tensors.get(f"{name}.resid_mid")
    return SubjectRun(generation=gen, step_logits=logits, hidden=list(hidden.float().unbind(0)) if hidden is not None
                      else None, label=SUBJECT, sampler=sampler, notes=notes, streams=streams, precision=p,
                      ran_in=ran_in, float32=recheck, ran_in_fix=fix,
                      resid_mid=list(mid.float().unbind(0)) if mid is not None and hidden is not None else None)


def hf_run(ref: Reference, res: Result, case: Case) -> HFRun:
    """HF's side of one case, from the reference: its token streams, logits and (if exported) residual stream; below
    float32, HF's own error at the result's precision."""
    config, name = ref.config, case.name
    hidden = ref.tensors.get(f"{name}.hidden")
    sampled = res.tensors.get(f"{name}.sampled") is not None
    notes = []
    if hidden is None and res.tensors.get(f"{name}.hidden") is not None:
        notes.append("per-layer comparison not possible: the reference was exported without --layers")
    run = HFRun(sequences=ref.tensors[f"{name}.tokens"].tolist() if sampled else None,
                settings_table=_settings_table(SamplingSettings(**case.settings), res.manifest) if sampled else [],
                logits=ref.tensors[f"{name}.logits"].float(),
                hidden=list(hidden.float().unbind(0)) if hidden is not None else None,
                n_layer=config["n_layer"], mlp_width=config["mlp_width"], notes=notes)
    mid = ref.tensors.get(f"{name}.resid_mid")
    run.resid_mid = list(mid.float().unbind(0)) if mid is not None and hidden is not None else None
    p = res.precision.judged
    if p.low:
        require_precision(ref, p)
        run.own_error_hidden, run.own_error_logits = ref.own_error(name, p.name)
    return run


def judge_case(ref: Reference, res: Result, case: Case, tokenizer) -> ParityReport:
    """One case: the result's run and HF's, from the files, through the one judge."""
    import time

    t0 = time.perf_counter()
    subject, hf = subject_run(ref, res, case, tokenizer), hf_run(ref, res, case)
    reference = "generate" if hf.sequences is not None else "logits"
    report = judge(subject, hf, SamplingSettings(**case.settings), reference, tokenizer=tokenizer,
                   model=ref.manifest["model"]["id"])
    report.timings["total_s"] = time.perf_counter() - t0
    return report


def _settings_table(s: SamplingSettings, manifest: dict) -> list[SettingRow]:
    """The sampling settings the result declares (manifest 'sampling', optional) against the case's."""
    declared = manifest.get("sampling") if isinstance(manifest.get("sampling"), dict) else {}
    rows = []
    for key in ("do_sample", "temperature", "top_k", "top_p"):
        hf_value = getattr(s, key) if key != "do_sample" else s.effective_method != "greedy"
        ours = declared.get(key, hf_value)
        differs = ours != hf_value
        if isinstance(ours, (int, float)) and isinstance(hf_value, (int, float)) and not isinstance(ours, bool):
            differs = not math.isclose(float(ours), float(hf_value))
        if key == "top_k":
            differs = (ours or 0) != (hf_value or 0)
        rows.append(SettingRow(key, ours, hf_value, "reference (export)", bool(differs)))
    return rows


# ---------------------------------------------------------------------------------------------------------
# Our own GPT writing a result (round trips, the bench, the dashboard's self-check)


@torch.inference_mode()
def result_from_gpt(model, ref: Reference, *, layers: bool = True, sampled: bool = True,
                    name: str = "GPT-2 Parity Lab core.GPT", precision: str | None = None,
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our GPT run on the reference's tokens, as any implementation would: (manifest, tensors). The residual stream
    is written when `layers` and the reference has it (a result's caseN.hidden needs the reference's).
    `precision` (one of core.precision.PRECISIONS): run it in that regime (a cast copy, or autocast around each
    forward), store the logits and residual stream in the dtype they come out in, and declare it in the manifest."""
    from ..precision import cast_copy, regime
    from ..sampling import generate
    from .localise import block_readings

    p = Precision(precision) if precision is not None else None
    if p is not None and p.weights_cast:
        model = cast_copy(model, p.dtype)
    ambient = regime(p, model.device.type) if p is not None else contextlib.nullcontext()
    keep = (lambda t: t.cpu()) if p is not None else (lambda t: t.float().cpu())  # noqa: E731
    tensors = {}
    with ambient:
        for case in ref.cases:
            tokens = ref.tensors[f"{case.name}.tokens"]
            P = len(case.prompt_ids)
            out = model(tokens[:, :-1].to(model.device), return_hidden=True)
            tensors[f"{case.name}.tokens"] = tokens
            tensors[f"{case.name}.logits"] = keep(out.logits[:, P - 1:]).contiguous()
            if layers and ref.manifest["layers"]:
                tensors[f"{case.name}.hidden"] = torch.stack([keep(h) for h in out.hidden]).contiguous()
            if layers and f"{case.name}.resid_mid" in ref.tensors:
                blocks = list(model.transformer.h)
                mids, _ = block_readings(lambda ids: model(ids), blocks, [b.attn for b in blocks],
                                         tokens[:, :-1].to(model.device))
                tensors[f"{case.name}.resid_mid"] = torch.stack([m.cpu() for m in mids]).contiguous()
            if sampled:
                gen = generate(model, case.prompt_ids, record=False, **case.settings)
                tensors[f"{case.name}.sampled"] = torch.tensor(gen.sequences, dtype=torch.long)
    dtype = p.name if p is not None else str(model.dtype).replace("torch.", "")
    impl = {"name": name, "framework": "torch", "dtype": dtype, "notes": ""}
    return result_manifest(ref, impl, sampler="torch", precision=p.name if p is not None else None), tensors


def result_from_model(model, ref: Reference, *, layers=None, name: str | None = None) -> Result:
    """Any GPT-2 (a torch.nn.Module or a function ids (B, T) -> logits, as compare() takes) run on the reference's
    token streams, teacher-forced: its logits, and its residual stream where the reference has one and the model's
    blocks are found (`layers` as compare()'s). No sampled ids: the models are judged, not the sampling.
    In memory; save_result() writes it as a file."""
    from types import SimpleNamespace

    from .foreign import replay

    shape = SimpleNamespace(config=SimpleNamespace(**ref.config))  # all that replay() reads of HF's model
    tensors: dict[str, torch.Tensor] = {}
    for case in ref.cases:
        tokens = ref.tensors[f"{case.name}.tokens"]
        P = len(case.prompt_ids)
        logits, hidden = replay(model, shape, tokens.tolist(), P, tokens.size(1) - P, layers)
        tensors[f"{case.name}.tokens"] = tokens
        tensors[f"{case.name}.logits"] = logits.cpu().contiguous()
        if hidden is not None and ref.manifest["layers"]:
            tensors[f"{case.name}.hidden"] = torch.stack([h.cpu() for h in hidden]).contiguous()
    impl = {"name": name or type(model).__name__, "framework": "torch", "dtype": "float32", "notes": ""}
    manifest = result_manifest(ref, impl, sampler="other")
    check_result_against(manifest, tensors, ref)
    return Result(manifest, tensors)
