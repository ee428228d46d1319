"""Parity engine: a model under test against HuggingFace's GPT-2, step by step and layer by layer.

A request becomes a verdict in four steps: resolve the models (engine.py), start HF's side (reference.HFSide),
run the model under test (subject.py: our GPT; foreign.py: any GPT-2; dump.py: a result file) into a SubjectRun,
and judge it against HF's run, an HFRun (judge.py: the only code that computes differences, diffs.py, explains rows,
explain.py, and decides the verdict). report.py holds the report's plain data. `python -m core.parity` is the CLI.
"""

from .diffs import ATOL, EPS32, NOISE_FACTOR, layer_diffs, relative_tolerance, step_diffs
from .engine import REFERENCES, compare, compare_run, resolve_subject, teacher_forced
from .explain import explain_rows
from .foreign import ForeignModelError, find_layers, logits_from_output, run_foreign
from .judge import judge
from .reference import (HF_RNG_LOCK, HFRun, HFSide, global_rng_section, hf_teacher_forced, run_hf_reference,
                        settings_table)
from .report import LayerDiff, ParityError, ParityReport, RowComparison, SettingRow, StepDiff
from .subject import SubjectRun, StepTracker, build_generation, run_ours

__all__ = [
    "compare", "compare_run", "judge", "resolve_subject", "SubjectRun", "HFRun", "HFSide", "StepTracker",
    "build_generation", "run_ours", "run_foreign", "find_layers", "logits_from_output", "ForeignModelError",
    "teacher_forced", "REFERENCES", "ParityError", "ParityReport", "LayerDiff", "StepDiff", "RowComparison",
    "SettingRow", "ATOL", "EPS32", "NOISE_FACTOR", "relative_tolerance", "layer_diffs", "step_diffs",
    "explain_rows", "HF_RNG_LOCK", "global_rng_section", "hf_teacher_forced", "run_hf_reference", "settings_table",
]

# Parity by exchanging files (reference dumps out, results in): core/parity/dump.py, docs/dump-format.md
from .dump import DumpCheck, DumpError, compare_dump, export_reference, load_reference, load_result  # noqa: E402

__all__ += ["compare_dump", "DumpCheck", "DumpError", "export_reference", "load_reference", "load_result"]

# Training parity: the loss, every gradient and a few optimizer steps (training.py runs, train_judge.py judges)
from .train_judge import ParamDiff, StepCheck, TrainingReport, judge_training  # noqa: E402
from .training import compare_training  # noqa: E402

__all__ += ["compare_training", "TrainingReport", "ParamDiff", "StepCheck", "judge_training"]
