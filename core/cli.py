"""Command-line front ends (`python -m core.generate`, `python -m core.parity`): flags -> one core call -> output.

Knows argparse and printing; the work is done by core.sampling and core.parity. Bad input exits 2 with a
one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .sampling import SamplingSettings

SEED_PROMPT = "Hello, I'm a language model,"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="gpt2", help="Hub id (gpt2, distilgpt2, ...) or a local checkpoint directory")
    ap.add_argument("--prompt", default=SEED_PROMPT, help="prompt text (default: the seed's)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="our model's dtype")
    ap.add_argument("--tokenizer", default=None, help="directory with GPT-2's vocab.json + merges.txt (optional)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_sampling_args(ap: argparse.ArgumentParser) -> None:
    d = SamplingSettings()
    ap.add_argument("--num-return-sequences", type=int, default=5, help="rows to sample (default 5, as the seed)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per row (wins over --max-length)")
    ap.add_argument("--max-length", type=int, default=d.max_length,
                    help=f"prompt + new tokens, as HF's max_length (default {d.max_length}, as the seed)")
    ap.add_argument("--method", default=d.method, choices=["hf", "nanogpt", "greedy"],
                    help="hf: HF generate() token for token; nanogpt: the seed's top-k loop; greedy: argmax")
    ap.add_argument("--top-k", type=int, default=d.top_k, help="top-k filter (0 = off; default 50 as HF)")
    ap.add_argument("--top-p", type=float, default=d.top_p, help="nucleus filter in (0, 1]")
    ap.add_argument("--temperature", type=float, default=d.temperature, help=">= 0; 0 means greedy")
    ap.add_argument("--seed", type=int, default=d.seed, help="random seed (default 42)")


def settings_from_args(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_return_sequences=args.num_return_sequences,
        seed=args.seed,
        method=args.method,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same one-line form and exit status as ours
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description)


def run_guarded(prog: str, body) -> int:
    """Run `body()`, turning every expected error into a one-line message and exit status 2."""
    from .errors import USER_ERRORS

    try:
        return body()
    except (*USER_ERRORS, CliError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def resolve_dtype_device(args) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise CliError(f"bad --device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda requested but no CUDA device is available")
    return device, DTYPES[args.dtype]


def main_generate(argv=None) -> int:
    prog = "python -m core.generate"
    ap = parser(prog, "Sample from our GPT-2 (the seed's example by default).")
    add_model_args(ap)
    add_sampling_args(ap)
    args = ap.parse_args(argv)

    def body() -> int:
        from .loader import load_pretrained
        from .sampling import generate
        from .tokenizer import load_tokenizer

        device, dtype = resolve_dtype_device(args)
        settings = settings_from_args(args)
        SamplingSettings.from_kwargs(**settings).validate()  # refuse bad flags before loading anything
        model = load_pretrained(args.model, device=device, dtype=dtype)
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        gen = generate(model, args.prompt, tokenizer=tokenizer, record=False, **settings)
        if args.json:
            out = {
                "model": str(args.model),
                "prompt": args.prompt,
                "prompt_ids": gen.prompt_ids,
                "settings": gen.settings,
                "device": str(device),
                "dtype": args.dtype,
                "rows": [
                    {"token_ids": seq, "new_token_ids": new, "text": text, "finished_by_eos": done}
                    for seq, new, text, done in zip(gen.sequences, gen.new_token_ids, gen.texts, gen.finished_by_eos)
                ],
            }
            print(json.dumps(out, ensure_ascii=False))
        else:
            for text in gen.texts:
                print(">", text)
        return 0

    return run_guarded(prog, body)


def main_parity(argv=None) -> int:
    prog = "python -m core.parity"
    ap = parser(prog, "Compare our GPT-2 with HuggingFace's while generating; exit 0 if they agree, 1 if not.")
    add_model_args(ap)
    add_sampling_args(ap)
    ap.add_argument("--reference", default="generate", choices=["generate", "pipeline", "logits"],
                    help="HF side: generate() with the same settings, the text-generation pipeline, or logits only")
    ap.add_argument("--fault", default=None, help="bug-lab fault to inject into our model (see --list-faults)")
    ap.add_argument("--list-faults", action="store_true", help="list the bug-lab faults and exit")
    args = ap.parse_args(argv)

    def body() -> int:
        from .faults import FAULTS, FaultError, get_fault
        from .loader import load_pair
        from .parity import compare
        from .tokenizer import load_tokenizer

        if args.list_faults:
            for f in FAULTS.values():
                print(f"{f.name:<24} {f.mistake}")
            return 0
        device, dtype = resolve_dtype_device(args)
        settings = settings_from_args(args)
        SamplingSettings.from_kwargs(**settings).validate()
        if args.fault is not None:
            try:
                get_fault(args.fault)  # a listed fault or "<mistake>@<block>"
            except FaultError as e:
                raise CliError(str(e)) from None
        ours, hf = load_pair(args.model)
        ours, hf = ours.to(device), hf.to(device)
        if dtype != torch.float32:
            ours = ours.to(dtype)
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        report = compare((ours, hf), args.prompt, tokenizer=tokenizer, reference=args.reference, fault=args.fault,
                         **settings)
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
        else:
            print(format_report(report))
        return 0 if report.agree else 1

    return run_guarded(prog, body)


def format_report(report) -> str:
    """A readable summary: verdict, per-row first divergence with its cause, max |Δlogit|, first layer."""
    lines = [
        f"verdict: {'AGREE' if report.agree else 'DIFFER'} - {report.verdict}",
        f"model: {report.model}   reference: {report.reference}   fault: {report.fault or 'none'}",
        f"max |Δlogit| over all steps: {report.max_abs_dlogit:.3g}   (tolerance: {report.rtol:g} x max|logit| + "
        f"{report.atol:g})",
        f"first diverging layer: {report.first_diverging_layer or 'none'}",
        "layers (max |Δ| / tolerance, both at the place that decides: tolerance = rtol x max|HF| there):",
    ]
    for layer in report.layers:
        mark = "  <-- first" if layer.name == report.first_diverging_layer else ""
        where = f"(row {layer.worst_row}, position {layer.worst_position})"
        lines.append(f"  {layer.name:<12} {layer.worst_abs_diff:10.3g} / {layer.tolerance:.3g}  {where}{mark}")
    if report.settings_table:
        lines.append("effective settings (ours | HF | HF's source):")
        for row in report.settings_table:
            flag = "  <-- differs" if row.differs else ""
            lines.append(f"  {row.name:<22} {row.ours!s:>10} | {row.hf!s:>10} | {row.source}{flag}")
    lines.append("rows:")
    for row in report.rows:
        where = "identical" if row.identical else f"first divergent step {row.first_divergent_step}"
        lines.append(f"  [{row.row}] {where}: {row.explanation}")
        lines.append(f"      ours: {row.ours_text!r}")
        if row.ref_text:
            lines.append(f"      HF:   {row.ref_text!r}")
    return "\n".join(lines)
