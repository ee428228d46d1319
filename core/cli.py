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

from . import progress
from .parity.judge import REFERENCES
from .precision import CHOICES as PRECISION_CHOICES
from .progress import Bar
from .sampling import METHODS, SamplingSettings, encode_prompt

SEED_PROMPT = "Hello, I'm a language model,"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EXIT_BAD_INPUT = 2


def program(module: str, command: str = "") -> str:
    """How the user called us, for usage and error lines: the installed command (`gpt2-parity ...`), else
    `python -m core.parity ...`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    base = name if name.startswith("gpt2-parity") else f"python -m {module}"
    return f"{base} {command}".strip()


class CliError(Exception):
    """Bad input from the command line: printed as one line, exit status 2. `kind` says which input was bad, for
    the JSON error object of `--json` (see run_guarded)."""

    def __init__(self, message: str, kind: str = "usage"):
        super().__init__(message)
        self.kind = kind


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
    ap.add_argument("--method", default=d.method, choices=list(METHODS),
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
    json_errors = False  # also print argparse's errors as a JSON object on stdout (a command's --json)

    def error(self, message):  # argparse's own errors: same one-line form and exit status as ours
        if self.json_errors:
            print_json_error(f"{message} (see --help)", "usage")
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def parser(prog: str, description: str, *, json_errors: bool = False) -> argparse.ArgumentParser:
    ap = _Parser(prog=prog, description=description)
    ap.json_errors = json_errors
    return ap


def print_json_error(message: str, kind: str) -> None:
    """What `--json` prints on stdout for bad input (exit status 2): {"error": message, "kind": kind}."""
    print(json.dumps({"error": message, "kind": kind}, ensure_ascii=False), flush=True)


def run_guarded(prog: str, body, *, json_errors: bool = False) -> int:
    """Run `body()`, turning every expected error into a one-line message and exit status 2 (with `json_errors`,
    also a JSON object on stdout, so that a --json reader always gets one)."""
    from .errors import USER_ERRORS

    try:
        return body()
    except (*USER_ERRORS, CliError) as exc:
        if json_errors:
            print_json_error(str(exc), exc.kind if isinstance(exc, CliError) else "bad_input")
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
    prog = program("core.generate")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # `export` / `check`: parity by exchanging files (core/parity/dump.py);
        return SUBCOMMANDS[argv[0]](argv[1:])  # `train`: training parity (core/parity/training.py)
    prog = program("core.parity")
    ap = parser(prog, "Compare our GPT-2 (or yours: --yours) with HuggingFace's while generating; exit 0 if they "
                      "agree, 1 if not, 2 on bad input. For implementations that cannot run in this process: "
                      "`export` (HF's reference to files) and `check` (a result file against it); see "
                      "`python -m core.parity export --help` and docs/dump-format.md. Training parity (the loss, "
                      "every gradient, optimizer steps): `python -m core.parity train --help`.")
    add_model_args(ap)
    add_sampling_args(ap)
    ap.add_argument("--reference", default="generate", choices=list(REFERENCES),
                    help="HF side: generate() with the same settings, the text-generation pipeline, or logits only")
    ap.add_argument("--fault", default=None, help="bug-lab fault to inject into our model (see --list-faults)")
    ap.add_argument("--list-faults", action="store_true", help="list the bug-lab faults and exit")
    ap.add_argument("--precision", default=None, choices=list(PRECISION_CHOICES),
                    help="the regime the model runs and is judged in: float32, bfloat16/float16 (weights and "
                         "activations), bfloat16-autocast/float16-autocast, tf32 (CUDA); auto (default) detects "
                         "what --yours does; --dtype bfloat16 means --precision bfloat16")
    ap.add_argument("--html", default=None, metavar="FILE",
                    help="also write the report as one self-contained HTML page (opens offline in any browser)")
    add_yours_args(ap)
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
        if args.html:
            check_writable(args.html, "--html")  # before minutes of work, not after
        if args.fault is not None:
            try:
                get_fault(args.fault)  # a listed fault or "<mistake>@<block>"
            except FaultError as e:
                raise CliError(str(e)) from None
        yours = load_yours(args)  # the user's code, before any checkpoint is loaded
        if yours is not None:
            from .loader import load_hf_model

            if args.fault is not None:
                raise CliError("--fault injects a bug-lab mistake into our GPT; it cannot be used with --yours")
            hf = load_hf_model(args.model).to(device)
            subject, extra = yours["model"], dict(sampling_step=yours["step"], layers=yours["layers"])
        else:
            ours, hf = load_pair(args.model)
            ours, hf = ours.to(device), hf.to(device)
            subject, extra = ours, {}
        precision = args.precision
        if dtype != torch.float32:  # --dtype is --precision for our model (kept for existing scripts)
            if precision not in (None, "auto", args.dtype):
                raise CliError(f"--dtype {args.dtype} and --precision {precision} disagree: give one of them")
            precision = args.dtype
        if precision is None:  # our model, loaded by the lab: float32 unless asked; yours: detected
            precision = "auto" if yours is not None else "float32"
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        _, prompt_ids = encode_prompt(args.prompt, tokenizer)  # refused here as compare() would refuse it
        new_tokens = SamplingSettings.from_kwargs(**settings).new_tokens_for(len(prompt_ids))
        with Bar(new_tokens, "sampling", "token", progress.wanted(args.json)) as bar:
            def on_step(ev) -> None:
                bar.update()
                if ev.step + 1 == new_tokens or all(ev.finished):
                    bar.describe("comparing with HuggingFace")

            report = compare((subject, hf), args.prompt, tokenizer=tokenizer, reference=args.reference,
                             fault=args.fault, precision=precision, on_step=on_step, **extra, **settings)
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
        else:
            print(format_report(report))
        if args.html:
            write_html(report, args.html, quiet=args.json)
        return 0 if report.agree else 1

    return run_guarded(prog, body)


def check_writable(path: str, flag: str) -> None:
    """Refuse an output file whose folder does not exist, or that is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"{flag} {path!r} is a directory: give a file name, e.g. {os.path.join(path, 'report.html')}")
    if not os.path.isdir(folder):
        raise CliError(f"{flag} {path!r}: no such directory {folder!r}")


def write_html(report, path: str, quiet: bool = False) -> None:
    """report.save_html(path), saying where it went (not under --json: stdout is one JSON object then)."""
    try:
        report.save_html(path)
    except OSError as exc:
        raise CliError(f"cannot write --html {path!r}: {exc.strerror}") from None
    if not quiet:
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB): the report as one page, opens offline")


def add_yours_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--yours", default=None, metavar="FILE.py:NAME",
                    help="your own GPT-2 instead of ours: a model object (nn.Module or function ids -> logits) or a "
                         "zero-argument factory returning one with weights loaded; --model is then HF's checkpoint")
    ap.add_argument("--yours-step", default=None, metavar="FILE.py:FUNC",
                    help="your own sampling step: (B, V) last-position logits -> (B,) ids, on the global RNG")
    ap.add_argument("--yours-layers", default=None, metavar="blocks=PATH,final_norm=PATH",
                    help="your model's blocks (a ModuleList) and final norm, where they are not found by themselves; "
                         "attn=PATH,mlp=PATH: a block's attention and MLP (paths inside a block)")


def load_yours(args) -> dict | None:
    """--yours/--yours-step/--yours-layers -> {"model", "step", "layers"} (None without --yours)."""
    from .usercode import UserCodeError, load_model, load_step, parse_layers

    if args.yours is None:
        if args.yours_step or args.yours_layers:
            raise UserCodeError("--yours-step and --yours-layers go with --yours FILE.py:NAME")
        return None
    layers = parse_layers(args.yours_layers)
    model = load_model(args.yours)
    step = load_step(args.yours_step) if args.yours_step else None
    return {"model": model, "step": step, "layers": layers}


def format_report(report) -> str:
    """A readable summary: verdict, per-row first divergence with its cause, max |Δlogit|, first layer."""
    lines = [
        f"verdict: {'AGREE' if report.agree else 'DIFFER'} - {report.verdict}",
        f"model: {report.model}   under test: {getattr(report, 'subject', 'Ours')}   reference: {report.reference}"
        f"   fault: {report.fault or 'none'}",
        f"max |Δlogit| over all steps: {report.max_abs_dlogit:.3g}   (tolerance: {report.rtol:g} x max|logit| + "
        f"{report.atol:g})",
        f"first diverging layer: {report.first_diverging_layer or 'none'}",
    ]
    prec = getattr(report, "precision", None) or {}
    if prec.get("factor"):
        lines.append(f"precision: {prec['label']} ({prec['how']}); tolerance adds {prec['factor']:g} x HF's own "
                     f"error at {prec['label']} (HF's own max |Δlogit|: {prec['hf_own_error']:.3g})")
        check = report.float32_check or {}
        lines.append("float32 re-check: " + (check["verdict"] if check.get("possible") else
                                             f"not possible: {check.get('why_not')}"))
    elif prec.get("how", "asked") != "asked":
        lines.append(f"precision: {prec['label']} ({prec['how']})")
    lines.append("layers (max |Δ| / tolerance, both at the place that decides: tolerance = rtol x max|HF| there):")
    for layer in report.layers:
        mark = "  <-- first" if layer.name == report.first_diverging_layer else ""
        where = f"(row {layer.worst_row}, position {layer.worst_position})"
        lines.append(f"  {layer.name:<12} {layer.worst_abs_diff:10.3g} / {layer.tolerance:.3g}  {where}{mark}")
    lines += localisation_lines(report)
    if report.settings_table:
        lines.append("effective settings (ours | HF | HF's source):")
        for row in report.settings_table:
            flag = "  <-- differs" if row.differs else ""
            lines.append(f"  {row.name:<22} {row.ours!s:>10} | {row.hf!s:>10} | {row.source}{flag}")
    for note in getattr(report, "notes", []):
        lines.append(f"note: {note}")
    side = getattr(report, "subject", "Ours").lower()
    lines.append("rows:")
    for row in report.rows:
        where = "identical" if row.identical else f"first divergent step {row.first_divergent_step}"
        lines.append(f"  [{row.row}] {where}: {row.explanation}")
        lines.append(f"      {side + ':':<5} {row.ours_text!r}")
        if row.ref_text:
            lines.append(f"      HF:   {row.ref_text!r}")
    return "\n".join(lines)


def localisation_lines(report) -> list[str]:
    """Where inside the model it differs, which blocks differ on HF's own input, and the likely mistake(s); nothing
    when the models agree (localisation does not run)."""
    status = getattr(report, "localisation", None)
    if status is None:
        return []
    if status != "done":
        sub = report.first_diverging_sublayer
        return ([f"first diverging sub-layer: {sub}"] if sub else []) + [f"localisation: {status}"]
    blocks = report.diverging_blocks
    lines = [f"first diverging sub-layer: {report.first_diverging_sublayer or 'not seen'}",
             "blocks that differ on HF's own input (each block given HF's residual stream): "
             + (", ".join(map(str, blocks)) if blocks else "none")]
    lines += ["likely mistake:"] + [f"  - {s}" for s in report.diagnosis] if report.diagnosis else []
    return lines


# ---------------------------------------------------------------------------------------------------------
# `python -m core.parity export | check`: parity for implementations that run outside this process


def read_prompts(path: str) -> list[str]:
    """A prompts file: a JSON list of strings (prompts with newlines), or plain text with one prompt per line."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise CliError(f"cannot read --prompts {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--prompts {path!r} is not UTF-8 text") from None
    if path.endswith(".json"):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"--prompts {path!r}: not valid JSON ({exc.msg})") from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise CliError(f"--prompts {path!r}: expected a JSON list of strings")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CliError(f"--prompts {path!r} holds no prompt")
    return prompts


def main_export(argv=None) -> int:
    prog = program("core.parity", "export")
    ap = parser(prog, "Write HuggingFace's reference for some prompts (token streams, logits, optionally the "
                      "residual stream) and a template of what a result must contain. See docs/dump-format.md.")
    ap.add_argument("--model", default="gpt2", help="Hub id or a local checkpoint directory")
    ap.add_argument("--prompts", default=None, help="file: one prompt per line, or a .json list of strings")
    ap.add_argument("--prompt", default=SEED_PROMPT, help="a single prompt when --prompts is not given")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layers", action="store_true", help="also dump the residual stream of every layer")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="one case per prompt and seed (default 42)")
    ap.add_argument("--tokenizer", default=None, help="directory with GPT-2's vocab.json + merges.txt (optional)")
    d = SamplingSettings()
    ap.add_argument("--method", default="hf", choices=["hf", "greedy"], help="HF generate() sampling, or greedy")
    ap.add_argument("--num-return-sequences", type=int, default=5, help="rows per case (default 5, as the seed)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per row (wins over --max-length)")
    ap.add_argument("--max-length", type=int, default=d.max_length, help=f"prompt + new tokens (default {d.max_length})")
    ap.add_argument("--top-k", type=int, default=d.top_k, help="top-k filter (0 = off; default 50)")
    ap.add_argument("--top-p", type=float, default=d.top_p, help="nucleus filter in (0, 1]")
    ap.add_argument("--temperature", type=float, default=d.temperature, help="> 0 (use --method greedy for argmax)")
    ap.add_argument("--precision", action="append", default=[], metavar="NAME[,NAME...]",
                    help="also store HF's own error at this precision, so that results computed in it can be judged "
                         "(bfloat16, float16, bfloat16-autocast, float16-autocast; tf32 on CUDA only); repeat the "
                         "flag or give a comma list")
    args = ap.parse_args(argv)

    def body() -> int:
        from .loader import load_hf_model
        from .parity.dump import export_precisions, export_reference, make_cases, save_reference
        from .tokenizer import load_tokenizer

        precisions = export_precisions([n for flag in args.precision for n in flag.split(",") if n.strip()])
        prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
        settings = dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, top_k=args.top_k,
                        top_p=args.top_p, temperature=args.temperature, method=args.method,
                        num_return_sequences=args.num_return_sequences)
        for seed in args.seeds:
            SamplingSettings.from_kwargs(**settings, seed=seed).validate()  # refuse bad flags before loading
        hf = load_hf_model(args.model)  # first: an unknown model is named as such, not as missing BPE files
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        cases = make_cases(prompts, tokenizer, args.seeds, **settings)
        with Bar(len(cases), "exporting HF's reference", "case", progress.wanted(False)) as bar:
            ref = export_reference(hf, cases, model=str(args.model), layers=args.layers, tokenizer=tokenizer,
                                   precisions=precisions, on_case=lambda case: bar.update())
        paths = save_reference(ref, args.out)
        size = paths["tensors"].stat().st_size
        extra = (", with layers" if args.layers else "") + (
            f", HF's own error at {', '.join(precisions)}" if precisions else "")
        print(f"wrote {len(cases)} case(s) for {args.model} to {args.out}: {paths['tensors'].name} "
              f"({size / 2**20:.1f} MiB{extra}), {paths['manifest'].name}, "
              f"{paths['template'].name} (reference id {ref.id})")
        return 0

    return run_guarded(prog, body)


def main_check(argv=None) -> int:
    prog = program("core.parity", "check")
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser(prog, "Judge a result written by any implementation against an exported reference: the same "
                      "report as `python -m core.parity`; exit 0 if every case agrees, 1 if not, 2 on bad input "
                      "(with --json: {\"error\", \"kind\"} on stdout, kind one of usage, reference, result, "
                      "tokenizer).", json_errors="--json" in argv)
    ap.add_argument("--reference", required=True, help="directory written by `python -m core.parity export`")
    ap.add_argument("--yours", required=True, help="your result: a .safetensors file (manifest in its metadata)")
    ap.add_argument("--manifest", default=None, help="the result's manifest as a separate JSON file (optional)")
    ap.add_argument("--tokenizer", default=None, help="directory with GPT-2's vocab.json + merges.txt (for texts)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    def body() -> int:
        from .errors import USER_ERRORS
        from .parity.dump import compare_dump, load_reference, load_result
        from .tokenizer import load_tokenizer

        def stage(kind: str, fn, *a, **kw):
            """fn(...), its bad-input errors tagged with the input they are about."""
            try:
                return fn(*a, **kw)
            except USER_ERRORS as exc:
                raise CliError(str(exc), kind) from None

        tokenizer = stage("tokenizer", load_tokenizer, args.tokenizer) if args.tokenizer else None
        ref = stage("reference", load_reference, args.reference)
        res = stage("result", load_result, args.yours, ref, manifest_path=args.manifest)
        result = compare_dump(ref, res, tokenizer=tokenizer)
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
        else:
            name = result.implementation.get("name") or "your result"
            blocks = []
            for case, report in zip(result.cases_described(), result.reports):
                block = format_report(report)
                notes = [n for n in report.notes if n not in block]  # unless format_report already shows them
                if notes:
                    block += "\nnotes:\n" + "\n".join(f"  - {n}" for n in notes)
                blocks.append(f"== {case} ==\n{block}")
            blocks.append(f"{name}: {'AGREE' if result.agree else 'DIFFER'} with the reference "
                          f"({sum(r.agree for r in result.reports)} of {len(result.reports)} case(s) agree)")
            print("\n\n".join(blocks))
        return 0 if result.agree else 1

    return run_guarded(prog, body, json_errors=args.json)


DUMP_COMMANDS = {"export": main_export, "check": main_check}


def format_training(report) -> str:
    """A training report as text: the verdict, the loss, where it diverges, the worst parameters, the steps."""
    lines = [f"verdict: {'AGREE' if report.agree else 'DIFFER'} - {report.verdict}",
             f"model: {report.model}   under test: {report.subject}   fault: {report.fault or 'none'}   "
             f"batch: {report.batch['batch_size']} x {report.batch['seq_len']}   precision: "
             f"{report.precision['label']}",
             f"loss: {report.loss:.6f}   HF: {report.hf_loss:.6f}   |Δ| {report.loss_diff:.3g} (tolerance "
             f"{report.loss_tolerance:.3g})",
             f"first diverging layer: {report.first_diverging_layer or 'none'}   first diverging parameter: "
             f"{report.first_diverging_parameter or 'none'}"]
    lines += [f"  {s}" for s in report.structure]
    if report.grad_layers:
        lines.append("gradient along the residual stream (from the loss): " + ", ".join(
            f"{l.name} {l.ratio:.2f}" + ("!" if l.exceeds else "") for l in report.grad_layers)
            + "  (max |Δ| / tolerance)")
    worst = sorted(report.params, key=lambda p: -p.ratio if p.ratio == p.ratio else 0)[:5]
    lines.append("parameters (worst gradients, max |Δ| / tolerance):")
    lines += [f"  {p.name:<36} {p.max_abs_diff:10.3g} / {p.tolerance:.3g}" + (f"  {p.note}" if p.note else "")
              + ("  DIFFERS" if p.exceeds else "") for p in worst]
    for s in report.steps:
        lines.append(f"step {s.step}: loss {s.loss:.6f}  HF {s.hf_loss:.6f}  |Δ| {s.loss_diff:.3g} (tol "
                     f"{s.loss_tolerance:.3g})  max |Δparam| vs HF {s.max_param_diff:.3g}"
                     + (f"  update differs first at {s.first_diverging_parameter}" if s.update_exceeds else "")
                     + ("  DIFFERS" if s.exceeds else ""))
    if report.mistakes[1:]:
        lines.append("also:")
        lines += [f"  - {m}" for m in report.mistakes[1:]]
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in report.notes]
    return "\n".join(lines)


def main_train(argv=None) -> int:
    """`python -m core.parity train`: one training step (and N optimizer steps) against HF's."""
    prog = "python -m core.parity train"
    ap = parser(prog, "Train one batch through your GPT-2 (--yours) or ours (with --fault) and HuggingFace's: the "
                      "loss, the gradient along the residual stream and on every parameter, and --steps AdamW steps "
                      "(build-nanogpt's). Exit 0 if they agree, 1 if not, 2 on bad input.",
                json_errors="--json" in (argv or []))
    ap.add_argument("--model", default="gpt2", help="HF checkpoint: Hub id or local directory (default gpt2)")
    ap.add_argument("--yours", default=None, metavar="FILE.py:NAME",
                    help="your GPT-2 (an nn.Module with HF's weights loaded, or a zero-argument factory)")
    ap.add_argument("--yours-optimizer", default=None, metavar="FILE.py:FUNC",
                    help="your optimizer: a function (list of parameters) -> optimizer; default build-nanogpt's AdamW")
    ap.add_argument("--yours-layers", default=None, metavar="blocks=PATH,final_norm=PATH",
                    help="your model's blocks and final norm, where they are not found by themselves")
    ap.add_argument("--fault", default=None, help="training fault injected into our GPT (see --list-faults)")
    ap.add_argument("--list-faults", action="store_true", help="list the training faults and exit")
    ap.add_argument("--llmc-state", default=None, metavar="FILE",
                    help="an llm.c debug state file (gpt2_124M_debug_state.bin layout) written by your port: judged "
                         "against --model on the file's own batch")
    ap.add_argument("--reference", default=None, metavar="FILE",
                    help="a training reference file (export it with --export-reference); with --result")
    ap.add_argument("--result", default=None, metavar="FILE", help="your training result file, against --reference")
    ap.add_argument("--export-reference", default=None, metavar="FILE",
                    help="write HF's training step on the batch (--batch-size, --seq-len, --seed) to FILE and exit")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps after the first backward (default 0)")
    ap.add_argument("--batch-size", type=int, default=4, help="rows of the batch (default 4)")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per row (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the batch's tokens (default 0)")
    ap.add_argument("--dropout", action="store_true",
                    help="dropout on, as each model has it, both drawing from --seed (default: off on both)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default build-nanogpt's 6e-4)")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16-autocast", "float16-autocast",
                                                               "tf32"],
                    help="float32 (default) or an autocast regime (build-nanogpt trains under bfloat16 autocast)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ap.set_defaults(dtype="float32")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    def body() -> int:
        from .faults import TRAINING_FAULTS, FaultError, apply_training_fault, get_training_fault
        from .loader import load_hf_model
        from .parity.training import LR, compare_training
        from .port import port_from_hf
        from .usercode import load_model, load_object, parse_layers

        if args.list_faults:
            for f in TRAINING_FAULTS.values():
                print(f"{f.name:<20} {f.mistake}")
            return 0
        device, _ = resolve_dtype_device(args)
        files = [f for f in ("llmc_state", "result", "export_reference") if getattr(args, f)]
        if files:
            return _train_files(args, files)
        if args.fault is not None:
            if args.yours is not None:
                raise CliError("--fault injects a training mistake into our GPT; it cannot be used with --yours")
            try:
                if get_training_fault(args.fault).needs_steps and args.steps < 1:
                    raise CliError(f"fault {args.fault!r} shows only in an optimizer step: pass --steps 1 or more")
            except FaultError as e:
                raise CliError(str(e)) from None
        lr = LR if args.lr is None else args.lr
        layers = parse_layers(args.yours_layers)
        model = load_model(args.yours) if args.yours is not None else None
        optimizer = "adamw"
        if args.yours_optimizer:
            optimizer = load_object(args.yours_optimizer)
            if not callable(optimizer):
                raise CliError(f"{args.yours_optimizer} is not a function (list of parameters) -> optimizer")
        hf = load_hf_model(args.model).to(device)
        if model is None:
            model, fault_opt = apply_training_fault(port_from_hf(hf), args.fault, lr)
            if fault_opt is not None:
                optimizer = fault_opt
        elif not isinstance(model, torch.nn.Module):
            raise CliError(f"{args.yours} is a plain function: training needs an nn.Module with parameters")
        else:
            model = model.to(device)
        report = compare_training(model, hf, batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                                  seed=args.seed, optimizer=optimizer, lr=lr, precision=args.precision, layers=layers,
                                  dropout=args.dropout,
                                  model_name=args.model, fault=args.fault,
                                  label="Yours" if args.yours else "Ours")
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
        else:
            print(format_training(report))
        return 0 if report.agree else 1

    return run_guarded(prog, body, json_errors=args.json)


def _train_files(args, files: list[str]) -> int:
    """`train` with files: --export-reference, --reference + --result, or --llmc-state."""
    from .loader import load_hf_model
    from .parity.train_dump import compare_llmc_state, compare_training_dump, export_training_reference

    if len(files) > 1 or args.yours or args.fault:
        raise CliError("give one of --llmc-state, --result (with --reference) or --export-reference, without "
                       "--yours or --fault")
    if files == ["export_reference"]:
        hf = load_hf_model(args.model)
        path = export_training_reference(hf, args.export_reference, batch_size=args.batch_size,
                                         seq_len=args.seq_len, seed=args.seed, model=args.model)
        print(f"wrote {path}")
        return 0
    if files == ["result"]:
        if not args.reference:
            raise CliError("--result needs --reference FILE (the training reference it was computed for)")
        report = compare_training_dump(args.reference, args.result)
    else:
        report = compare_llmc_state(args.llmc_state, load_hf_model(args.model), model=args.model)
    print(json.dumps(report.to_dict(), ensure_ascii=False, default=str) if args.json else format_training(report))
    return 0 if report.agree else 1


SUBCOMMANDS = {**DUMP_COMMANDS, "train": main_train}
