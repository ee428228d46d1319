"""The parity report's data: plain, JSON-ready dataclasses (and back). Knows no model, no tensor, no UI."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ParityLabError
from ..sampling import Generation


class ParityError(ParityLabError, ValueError):
    """Bad input to compare() (unknown reference, missing pieces for the pipeline reference...)."""


@dataclass
class LayerDiff:
    """One layer's comparison. Each (row, position) is judged against its own tolerance, rtol * max_c |HF value|
    there (+ atol); the place where max_c|Δ| / tolerance is largest (the "worst" place) decides, and the fields
    below describe it, so that a figure can show worst_abs_diff against tolerance in the same terms."""

    index: int
    name: str  # "embeddings", "block 0", ..., "ln_f", "lm_head"
    max_abs_diff: float  # max |Δ| over the whole layer (wherever it is)
    scale: float  # max |HF value| over the whole layer
    tolerance: float  # the tolerance at the worst place: rtol * worst_scale + atol
    exceeds: bool  # ratio > 1: some place differs by more than its tolerance
    ratio: float = 0.0  # max over places of max_c|Δ| / tolerance there (> 1: flagged)
    worst_row: int = 0
    worst_position: int = 0  # sequence position of the worst place (for lm_head too)
    worst_abs_diff: float = 0.0  # max_c |Δ| at the worst place
    worst_scale: float = 0.0  # max_c |HF value| at the worst place
    hf_own_error: float | None = None  # below float32: HF's own max_c |Δ| at that precision at the worst place


@dataclass
class StepDiff:
    step: int
    row: int
    max_abs_dlogit: float
    tolerance: float
    exceeds: bool
    kl: float | None  # KL(HF || ours) of the sampling distributions; None if ours gives 0 where HF doesn't
    support_mismatch: bool
    top1_agree: bool
    top50_overlap: int
    token_id: int  # the token our sampler chose here
    ours_prob: float
    ours_rank: int
    hf_prob: float
    hf_rank: int
    hf_top_probs: list[float]  # HF's model probabilities of our record's top-50 tokens (same order)
    hf_top_sample_probs: list[float]
    scale: float = 0.0  # max |HF logit| at this step and row; tolerance = rtol * scale + atol (+ precision's)
    hf_own_error: float | None = None  # below float32: HF's own max |Δlogit| at that precision here


@dataclass
class RowComparison:
    row: int
    ours_new_ids: list[int]
    ref_new_ids: list[int]
    ours_text: str
    ref_text: str
    identical: bool
    first_divergent_step: int | None
    cause: str | None  # None | model | sampler | settings | sampling_order | near_tie | precision | unexplained
    explanation: str
    evidence: dict = field(default_factory=dict)


@dataclass
class SettingRow:
    name: str
    ours: object
    hf: object
    source: str  # "you" | "model generation_config" | "pipeline default" | "transformers default" | ...
    differs: bool


@dataclass
class ParityReport:
    model: str
    prompt: str | None
    prompt_ids: list[int]
    settings: dict
    reference: str
    fault: str | None
    agree: bool  # the implementations agree: models within tolerance and every divergence explained
    verdict: str  # one line in plain words
    verdict_kind: str  # identical | logits_agree | precision | sampling_order | settings | near_tie | model | sampler
    #                    | unexplained
    rtol: float  # max|Δ| tolerated per unit of max|HF value|, at each place (NOISE_FACTOR*eps32*sqrt(mlp_width))
    atol: float
    max_abs_dlogit: float
    first_diverging_layer: str | None
    layers: list[LayerDiff]
    steps: list[list[StepDiff | None]]  # [step][row]; None where the row had finished
    rows: list[RowComparison]
    settings_table: list[SettingRow]
    generation: Generation
    ref_sequences: list[list[int]] | None
    timings: dict
    subject: str = "Ours"  # how the model under test is named ("Ours", "Yours", "Result file")
    sampler: str | None = None  # what chose its tokens: "hf" | "nanogpt" | "greedy" | "yours" (their own step)
    notes: list[str] = field(default_factory=list)  # e.g. why per-layer comparison was not possible
    # the regime the run was judged in: name ("float32", "bfloat16", "bfloat16-autocast", ...), label, how it was known
    # ("asked" / "detected: ..."), and below float32 the factor on HF's own error and HF's own max |Δlogit|
    precision: dict = field(default_factory=lambda: {"name": "float32", "how": "asked", "label": "float32",
                                                     "factor": None, "hf_own_error": None})
    # below float32: the model re-run in float32 on the same streams, judged by the float32 rule (or why it could not)
    float32_check: dict | None = None
    # localisation, after the verdict and only when the models differ (None / [] otherwise):
    # "block 7 attention" / "block 7 MLP": the first place inside a block whose residual stream differs
    first_diverging_sublayer: str | None = None
    diverging_blocks: list[int] = field(default_factory=list)  # every block whose own output differs on HF's input
    diagnosis: list[str] = field(default_factory=list)  # the likely mistake(s), plain sentences
    sublayers: list[LayerDiff] = field(default_factory=list)  # after each block's attention, on its own stream
    isolated: list[LayerDiff] = field(default_factory=list)  # each block on HF's input at that block ("block k")
    localisation: str | None = None  # None: not needed; "pending"; "done"; or why it was not possible

    def to_dict(self) -> dict:
        return _plain(self)

    def __repr__(self) -> str:
        """One screen: the verdict and where the models part (the whole report is to_dict(); text: core.cli)."""
        bad = [r for r in self.rows if not r.identical]
        lines = [f"<ParityReport {'AGREE' if self.agree else 'DIFFER'}: {self.verdict}",
                 f"  model {self.model!r}, under test: {self.subject}, reference {self.reference}, "
                 f"precision {self.precision.get('label', 'float32')}, fault {self.fault or 'none'}",
                 f"  max |Δlogit| {self.max_abs_dlogit:.3g}, first diverging layer: "
                 f"{self.first_diverging_layer or 'none'}; {len(self.rows)} row(s), {len(bad)} differ(s)"]
        lines += [f"  row {r.row}: first difference at step {r.first_divergent_step} ({r.cause})"
                  + ("" if self.verdict.startswith(r.explanation) else f": {_clip(r.explanation)}") for r in bad[:5]]
        if len(bad) > 5:
            lines.append(f"  ... {len(bad) - 5} more")
        return "\n".join(lines) + ">"

    def _repr_html_(self) -> str:
        """Jupyter's view: verdict, both texts with the first difference marked, per-step and per-layer figures."""
        from demo.report import notebook_html

        return notebook_html(self.to_dict())

    def to_html(self) -> str:
        """One self-contained HTML page (works offline) with everything the dashboard shows for this run, and the
        run's data to load it back (demo.report.read_report_html)."""
        from demo.report import page_html

        return page_html(self.to_dict())

    def save_html(self, path) -> str:
        """to_html() written to `path` (returned)."""
        from pathlib import Path

        Path(path).write_text(self.to_html(), encoding="utf-8")
        return str(path)

    @classmethod
    def from_dict(cls, d: dict) -> "ParityReport":
        from ..sampling import StepRecord

        d = dict(d)
        gen = dict(d["generation"])
        gen["records"] = [[StepRecord(**r) if r is not None else None for r in step] for step in gen["records"]]
        d["generation"] = Generation(**gen)
        d["layers"] = [LayerDiff(**x) for x in d["layers"]]
        for key in ("sublayers", "isolated"):
            d[key] = [LayerDiff(**x) for x in d.get(key) or []]
        d["steps"] = [[StepDiff(**x) if x is not None else None for x in step] for step in d["steps"]]
        d["rows"] = [RowComparison(**x) for x in d["rows"]]
        d["settings_table"] = [SettingRow(**x) for x in d["settings_table"]]
        return cls(**d)


_SCALARS = (int, float, str, bool, type(None))


def _clip(text: str, chars: int = 110) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _plain(obj):
    """dataclasses.asdict without its deep copies (the report is not mutated afterwards): ~5x faster."""
    if hasattr(obj, "__dataclass_fields__"):
        return {name: _plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
    if isinstance(obj, (list, tuple)):  # lists of plain numbers/strings are shared, not copied
        return [_plain(x) for x in obj] if any(not isinstance(x, _SCALARS) for x in obj) else obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


