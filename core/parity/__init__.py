"""Parity engine: a model under test against HuggingFace's GPT-2, step by step and layer by layer.

`compare()` (engine.py) ties together the report's data (report.py), HF's side (reference.py), the
differences and their tolerances (diffs.py) and the explanations (explain.py). `python -m core.parity` is the CLI.
"""

from .diffs import ATOL, EPS32, NOISE_FACTOR, layer_diffs, relative_tolerance, sampling_log_probs, step_diffs
from .engine import REFERENCES, compare, teacher_forced
from .explain import explain_rows
from .reference import HF_RNG_LOCK, global_rng_section, hf_teacher_forced, run_hf_reference, settings_table
from .report import LayerDiff, ParityError, ParityReport, RowComparison, SettingRow, StepDiff

__all__ = [
    "compare", "teacher_forced", "REFERENCES", "ParityError", "ParityReport", "LayerDiff", "StepDiff", "RowComparison",
    "SettingRow", "ATOL", "EPS32", "NOISE_FACTOR", "relative_tolerance", "layer_diffs", "step_diffs",
    "sampling_log_probs", "explain_rows", "HF_RNG_LOCK", "global_rng_section", "hf_teacher_forced",
    "run_hf_reference", "settings_table",
]
