"""A report and a generation in a real Jupyter kernel (nbclient drives ipykernel, as a notebook server would): the
HTML output shows the verdict, both texts with the first difference marked and the key figures, with plotly's JS
in the first output only (offline: no script from a CDN); the plain repr fits one screen."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, TINY

CELLS = [
    f"import sys; sys.path.insert(0, {str(ROOT)!r})",
    f"""from core import compare, load_tokenizer, port_from_hf
from core.structured import random_gpt2
hf = random_gpt2(seed=0, **{TINY!r})
report = compare((port_from_hf(hf), hf), "Hello, I'm a language model,", tokenizer=load_tokenizer(None),
                 max_new_tokens=8, num_return_sequences=2, fault="untied_lm_head")
report""",
    "report",
    "report.generation",
]
PLOTLY_BUNDLE = "plotly.js v"  # the banner at the top of plotly's own bundle


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> list[dict]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}).execute()
    return [next((o["data"] for o in cell.outputs if o.get("output_type") == "execute_result"), {}) for cell in nb.cells]


def test_report_html_in_a_notebook(outputs):
    first, again = outputs[1]["text/html"], outputs[2]["text/html"]
    for html in (first, again):
        assert 'id="verdict"' in html and "verdict-bad" in html and "first diverging layer lm_head" in html
        assert html.count('class="tok first" data-s="0"') == 4  # each row's first different token, in both texts
        assert html.count("Plotly.newPlot") == 2  # per step and per layer
        assert "<script src=" not in html  # nothing fetched: plotly.js is inline (its bundle only names a map CDN)
    assert first.count(PLOTLY_BUNDLE) == 1 and PLOTLY_BUNDLE not in again and "cdn.plot.ly" not in again
    assert len(again) < 200_000  # the report itself, without plotly.js


def test_plain_repr_fits_a_screen(outputs):
    text = outputs[2]["text/plain"]
    assert text.startswith("<ParityReport DIFFER") and len(text) < 2_000 and text.count("\n") < 20


def test_generation_in_a_notebook(outputs):
    gen = outputs[3]
    assert gen["text/plain"].startswith("<Generation 2 row(s)") and len(gen["text/plain"]) < 2_000
    assert gen["text/html"].count('class="pl-row"') == 2 and "Hello, I&#x27;m a language model," in gen["text/html"]
