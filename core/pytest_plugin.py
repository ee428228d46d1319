"""The pytest plugin (entry point `pytest11: gpt2_parity`, active once the lab is pip-installed): pin your GPT-2 to
HuggingFace's with golden references committed beside your tests.

    def test_my_gpt_matches_hf(gpt2_parity):
        gpt2_parity.check(MyGPT.from_pretrained("gpt2"), hf="gpt2", prompts=["Hello, I'm a language model,"])

The first run (or `pytest --parity-regen`) exports HF's reference for those prompts and seeds (core/parity/dump.py,
as `python -m core.parity export`) into `parity_golden/<test name>/` beside the test file (or under the ini option
`parity_golden_dir`): commit that folder. Later runs load it and judge your model against it offline, without
HF's model or the Hub; a failure says the verdict, the first diverging layer, the first step over tolerance and the
cause (core.testing.describe_failure). Your model is run teacher-forced on HF's token streams: its logits and, where
its blocks are found, its residual stream are judged; its sampling is not (compare() and assert_matches_hf judge
that, with HF's model at hand).

Knows pytest's hooks and the golden folders; the work is export_reference, result_from_model and compare_dump.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GOLDEN_FOLDER = "parity_golden"
DEFAULTS = dict(num_return_sequences=1, max_new_tokens=20)  # small golden files: ~4 MB of logits for GPT-2 124M
_WRITTEN = pytest.StashKey[list]()
CAUSES = {"model": "the network computes something else than HF's: look at the first diverging layer",
          "precision": "differences beyond HF's own error at that precision",
          "unexplained": "differences the lab cannot attribute"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpt2-parity", "GPT-2 Parity Lab golden references")
    group.addoption("--parity-regen", action="store_true", default=False,
                    help="export HuggingFace's golden references again (needs HF's model: the Hub or its cache)")
    parser.addini("parity_golden_dir", "folder of the golden references, relative to the rootdir (default: "
                  f"{GOLDEN_FOLDER}/ beside each test file)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_WRITTEN] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN, [])
    if written:
        terminalreporter.section("gpt2-parity golden references written (commit them)")
        for path in written:
            terminalreporter.write_line(str(path))


class GoldenParity:
    """gpt2_parity.check(model, ...): your model against HF's golden reference for this test."""

    def __init__(self, folder: Path, regen: bool, written: list):
        self.folder, self.regen, self._written = folder, regen, written

    def check(self, model, *, hf="gpt2", prompts=("Hello, I'm a language model,",), seeds=(42,), layers=None,
              name: str | None = None, **settings):
        """Judge `model` (a torch.nn.Module or a function ids (B, T) -> logits) against HF's reference for these
        prompts and seeds (`hf`: a Hub id, a checkpoint directory or a GPT2LMHeadModel, needed only to export).
        Settings as compare()'s (method "hf" or "greedy"; default 1 row of 20 new tokens). `name`: the golden
        folder's name when one test checks several references. Returns the DumpCheck; fails the test if any case
        differs."""
        from .parity.dump import compare_dump, load_reference, result_from_model

        folder = self.folder / name if name else self.folder
        settings = {**DEFAULTS, **settings}
        if self.regen or not (folder / "manifest.json").is_file():
            self._export(folder, hf, list(prompts), list(seeds), settings)
        ref = load_reference(folder)
        _same_cases(ref, folder, list(prompts), list(seeds), settings)
        check = compare_dump(ref, result_from_model(model, ref, layers=layers))
        if not check.agree:
            pytest.fail(_failure(check, folder), pytrace=False)
        return check

    def _export(self, folder: Path, hf, prompts: list, seeds: list[int], settings: dict) -> None:
        from .loader import load_hf_model
        from .parity.dump import export_reference, make_cases, save_reference
        from .tokenizer import load_tokenizer

        model_id = hf if isinstance(hf, (str, Path)) else getattr(hf.config, "_name_or_path", "") or "gpt2"
        hf_model = load_hf_model(str(hf)) if isinstance(hf, (str, Path)) else hf
        tokenizer = load_tokenizer(str(hf)) if isinstance(hf, (str, Path)) else load_tokenizer(None)
        cases = make_cases(prompts, tokenizer, seeds, **settings)
        ref = export_reference(hf_model, cases, model=str(model_id), layers=True, tokenizer=tokenizer)
        save_reference(ref, folder)
        self._written.append(folder)


def _same_cases(ref, folder: Path, prompts: list, seeds: list[int], settings: dict) -> None:
    """Refuse a golden reference exported for other prompts, seeds or settings than the test now asks for."""
    from .parity.dump import make_cases
    from .tokenizer import load_tokenizer

    wanted = [c.to_dict() for c in make_cases(prompts, load_tokenizer(None), seeds, **settings)]
    if wanted != ref.manifest["cases"]:
        pytest.fail(f"the golden reference in {folder} was exported for other prompts, seeds or settings than this "
                    "test asks for: run pytest --parity-regen to export it again (and commit it)", pytrace=False)


def _failure(check, folder: Path) -> str:
    from .testing import describe_failure

    bad = [(case, r) for case, r in zip(check.cases_described(), check.reports) if not r.agree]
    lines = [f"{len(bad)} of {len(check.reports)} case(s) differ from HuggingFace's golden reference ({folder}):"]
    for case, r in bad:
        lines.append(describe_failure(r, r.prompt, r.settings.get("seed")))
        lines.append(f"  cause: {r.verdict_kind} ({CAUSES.get(r.verdict_kind, 'see the verdict')})")
    return "\n".join(lines)


@pytest.fixture
def gpt2_parity(request: pytest.FixtureRequest) -> GoldenParity:
    """Your GPT-2 against HF's golden reference for this test (see the module's docstring)."""
    config = request.config
    root = config.getini("parity_golden_dir")
    base = Path(config.rootpath, root) if root else Path(request.path).parent / GOLDEN_FOLDER
    test = re.sub(r"[^\w.-]+", "_", request.node.name).strip("_")
    return GoldenParity(base / test, config.getoption("parity_regen"), config.stash[_WRITTEN])
