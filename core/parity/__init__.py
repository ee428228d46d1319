"""Parity engine: a model under test against HuggingFace's GPT-2, step by step and layer by layer.

`compare()` (engine.py) runs a model under test (subject.py: our GPT; foreign.py: any GPT-2) into a SubjectRun
and `compare_run()` ties together the report's data (report.py), HF's side (reference.py), the
differences and their tolerances (diffs.py) and the explanations (explain.py). `python -m core.parity` is the CLI.
"""

from .diffs import ATOL, EPS32, NOISE_FACTOR, layer_diffs, relative_tolerance, sampling_log_probs, step_diffs
from .engine import REFERENCES, compare, compare_run, resolve_subject, teacher_forced
from .foreign import ForeignModelError, find_layers, logits_from_output, run_foreign
from .explain import explain_rows
from .reference import HF_RNG_LOCK, global_rng_section, hf_teacher_forced, run_hf_reference, settings_table
from .report import LayerDiff, ParityError, ParityReport, RowComparison, SettingRow, StepDiff
from .subject import SubjectRun, StepTracker, assemble_generation, build_generation, run_ours, sampling_probs

__all__ = [
    "compare", "compare_run", "resolve_subject", "SubjectRun", "StepTracker", "build_generation",
    "assemble_generation", "run_ours", "run_foreign", "sampling_probs", "find_layers", "logits_from_output",
    "ForeignModelError", "teacher_forced", "REFERENCES", "ParityError", "ParityReport", "LayerDiff", "StepDiff", "RowComparison",
    "SettingRow", "ATOL", "EPS32", "NOISE_FACTOR", "relative_tolerance", "layer_diffs", "step_diffs",
    "sampling_log_probs", "explain_rows", "HF_RNG_LOCK", "global_rng_section", "hf_teacher_forced",
    "run_hf_reference", "settings_table",
]

# Parity by exchanging files (reference dumps out, results in): core/parity/dump.py, docs/dump-format.md
from .dump import DumpCheck, DumpError, compare_dump, export_reference, load_reference, load_result  # noqa: E402

__all__ += ["compare_dump", "DumpCheck", "DumpError", "export_reference", "load_reference", "load_result"]
