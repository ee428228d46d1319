"""The dashboard's fixed prose, in one place: title, introduction, help, banners, status lines, plot explanations.

Knows words only (constants, some with {placeholders}); no imports, no logic. The inputs' own labels and refusals
are in inputs.py (next to their limits), and what is computed from a report in render.py.
"""

TITLE = "GPT-2 Parity Lab"

INTRO = """
# GPT-2 Parity Lab
Your GPT-2 samples differ from HuggingFace's and you can't tell why? Type a prompt and press **Generate**.
Our from-scratch GPT-2 samples; HuggingFace's `GPT2LMHeadModel` is run on the very same tokens, step by step
and layer by layer, and HF's own `generate()` (or the `text-generation` pipeline) samples with the same random
seed. The verdict says whether the two agree and, if not, **why**: the model, the settings, the order of random
draws, or a near-tie flipped by float noise. New here? Press **▶ The seed's case**: a GPT-2 port's top-k loop
against HF's pipeline, whose texts differ though the models agree. The **bug lab** shows real porting mistakes.
"""
# app.py --yours FILE.py:NAME: the same page about the user's own model ({spec}: what they named).
INTRO_YOURS = """
# GPT-2 Parity Lab
Your GPT-2 (`{spec}`) samples; HuggingFace's `GPT2LMHeadModel` is run on the very same tokens, step by step and
layer by layer, and HF's own `generate()` (or the `text-generation` pipeline) samples with the same random seed.
Type a prompt and press **Generate** (or **▶ The seed's case**). The verdict says whether your model agrees with
HuggingFace and, if not, **why**: the model (and at which layer), the settings, the order of random draws, or a
near-tie flipped by float noise.
"""

OFFLINE_BANNER = (
    "⚠️ **Offline mode**: `{wanted}` could not be loaded ({why}). Running on a built-in tiny random-init GPT-2 "
    "(GPT-2's architecture and vocabulary, small dimensions, fixed random seed). The texts are noise, but every "
    "parity figure is real: ours and HuggingFace's are compared exactly as for the real model."
)
OWN_CHECKPOINT_HINT = "To compare your own checkpoint, start the app with `--model DIR` (a local checkpoint directory)."
LOADING_BANNER = (
    "⏳ `{wanted}` is still downloading from the Hugging Face Hub (started {seconds:.0f} s ago). Meanwhile the page "
    "runs on the built-in tiny random-init GPT-2 (its texts are noise, its parity figures real): choose `{wanted}` "
    "in the Model menu again in a minute."
)
MODEL_LOADING = (
    "⏳ `{model}` is downloading from the Hugging Face Hub (started {seconds:.0f} s ago); Generate works once it is "
    "loaded. Other models, and the built-in tiny one, work meanwhile."
)
LOAD_FAILED_BANNER = (
    "⚠️ **`{wanted}` could not be loaded**: {why}. {next_step} Running on the built-in tiny random-init GPT-2 "
    "meanwhile: the texts are noise, but every parity figure is real. " + OWN_CHECKPOINT_HINT
)

PROMPT_EXAMPLES = [
    "Hello, I'm a language model,",
    "The meaning of life is",
    "def fibonacci(n):",
    "In a shocking finding, scientists discovered a herd of unicorns",
]

HELP_METHOD = (
    "hf reproduces HF generate() token for token under the same seed; nanogpt is the build-nanogpt loop "
    "(softmax, top-k, multinomial over the k probabilities); greedy takes the argmax."
)
HELP_REFERENCE = (
    "What HF runs: generate() with the same settings and seed, the text-generation pipeline called as the "
    "seed's author did (set_seed + pipe(prompt, max_length, num_return_sequences)), or no HF sampling at all."
)
HELP_PRECISION = (
    "Below float32 the model is judged against HuggingFace's own error at that precision (HF run the same way on the "
    "same tokens), drawn as the grey band, and re-run in float32 to show what the precision could hide.")
HELP_FAULT = "Inject a real porting mistake into OUR model only, and watch the comparison catch it."
HELP_FAULT_YOURS = ("Off: the bug lab injects its mistakes into our from-scratch GPT-2, and this page compares your "
                    "model ({label}) instead.")
SEED_CASE_BUTTON = "▶ The seed's case: top-k loop vs HF's pipeline"
UPLOAD_HELP = (
    "Run your own GPT-2 (C, CUDA, Rust, JAX, numpy...) on the reference's token ids and upload the "
    "`.safetensors` file it writes (format: `docs/dump-format.md`; add the manifest `.json` if it is not in "
    "the file's metadata). Nothing you upload is executed. Logits stored as BF16 or F16 (or a manifest "
    "`\"precision\"`) are judged against HF's own error at that precision. **Get the reference** gives the seed's "
    "case for the model chosen above; `python -m core.parity export` makes others."
)

VERDICT_STYLE = {
    True: ("#e8f7ee", "#1a7f37", "✔"),
    False: ("#fdecea", "#b42318", "✘"),
}

# After a refused request: what was not done, and which button to press again, per button.
ERROR_PREFIX = {"run": "Not run", "check": "Not checked"}
ERROR_HINT = {
    "run": "Nothing was run: the views below are cleared. Fix the input and press Generate again.",
    "check": "Nothing was checked: the views below are cleared. Fix the file and press Check result again.",
}
CHECKING = "⏳ Reading the result file and computing HF's reference …"
CHECK_REFUSED = "❌ Not checked: the reason is in the verdict panel above."  # said once, there

# The first field of the JSON download: what its compaction did, so that a reader can undo it.
DOWNLOAD_FORMAT = (
    "GPT-2 Parity Lab report (core.ParityReport.to_dict()), compact: per-token display numbers (top-50 lists, "
    "probabilities, entropies) rounded to {digits} significant digits, the measured differences (max_abs_dlogit, "
    "tolerance, kl, layers) at full precision; token strings stored once in 'tokens' (id -> text) instead of "
    "'token'/'top_tokens' in every record; top_kept = top_sample_probs > 0. demo.handlers.expand_report() restores "
    "the report's own shape."
)

HTML_BUTTON = "Make the report as one HTML page"
HTML_NO_RUN = "Nothing to put in a report yet: press Generate (or check a result file) first."
RUNNING = "⏳ Generating with our GPT-2 …"
COMPARING = "⏳ Comparing with HuggingFace (teacher-forced pass and HF's own sampling) …"

PLOT_HELP = """
### How to read the plots
- **Texts**: hover a generated token for its id and its probability and rank under both models; click it to open
  the top-50 view at that step and row. The first token that differs from the other side is red, later ones grey.
- **Per step**: top, the largest difference between our logits and HF's at each step (max |Δlogit|, log scale);
  the dashed line is the tolerance and the green band under it is float noise: above it the models really
  differ. Bottom, the total variation between the two sampling distributions (0 = identical, 1 = disjoint): unlike
  KL it stays finite when one side can sample a token the other cannot (marked ✕, "supports differ"). It is
  computed over our top-50 tokens plus "all other tokens" as one outcome: exact whenever our sampling keeps only
  our top-50 (top-k ≤ 50), a lower bound otherwise (the hover says which, with Jensen-Shannon and KL). With
  several rows the line is the worst row at each step and the band the spread across rows. Its green band is the
  most that logits within the tolerance can move it (tanh(tolerance / temperature)): float noise lies inside it.
- **Top-50 at a step**: the 50 most likely tokens under our model at the chosen step and row (rank 1 on top).
  Bars: the model's probabilities (softmax of the logits), ours and HF's for the same tokens. Ticks: the sampling
  probabilities (after temperature, top-k and top-p, renormalised), ours and HF's. The sampled token is outlined
  and marked ▶; the dotted line is the top-k / top-p cut-off (tokens below it could not be sampled). Tick
  *log scale* to see the tail. ␣ is a space, ↵ a newline.
- **Over steps**: a heatmap of the sampling probabilities of the top-50 tokens at every step (rank 1 at the
  top), and the entropy of the distribution with the chosen token's probability and rank; the selected step is
  marked.
- **Per step**, purple line (only when HF sampled with other settings than ours, e.g. the pipeline's temperature
  0.7): the total variation between what we sample from and what HF samples from under *its own* settings, rebuilt
  from HF's probabilities of our top-50 tokens (exact when HF's top-k is at most 50). The orange line compares both
  models under our settings, so it stays in the noise when only the settings differ: the purple one shows what the
  settings do.
- **Per layer**: max |Δ| of the residual stream after the embeddings, each block, ln_f, and the logits, at the
  layer's *worst place*: the row and position with the largest |Δ| relative to the tolerance there (rtol × max |HF
  value| there), which decides whether the layer exceeds it. The first layer above its tolerance is where the two
  implementations start to differ: that is where to look. A green ◆ on the axis floor is an exact 0 (bit-identical;
  a log axis has no 0).
- **Settings**: each generation setting as HF actually used it and where it came from (you, the model's
  generation_config, the pipeline's defaults, or transformers' own defaults). A highlighted row differs from
  ours: that alone changes the samples.
- **Link**: after Generate the page's address holds every input; share it to let someone rerun the same comparison.
"""

# Captions under the plots: what they show, in plain words ({our}/{ours}: "our"/"ours", "your"/"yours" with --yours).
CAPTION_STEPS = (
    "**Top:** how far {our} next-token scores (logits) are from HF's at each step; under the dashed line is "
    "float rounding noise. **Bottom:** how differently the two would pick the next token: 0 = the same odds for "
    "every token, 1 = they could never pick the same one (the *total variation*). ✕: HF could pick a token "
    "{ours} never would (*supports differ*, KL = ∞). Purple, when HF sampled with other settings: what those "
    "settings alone change."
)
CAPTION_LAYERS = (
    "How far each layer's output is from HF's, where it is furthest relative to its tolerance (its *worst place*). "
    "The first red bar is where the two implementations start to differ: look there. Green ◆: exactly 0."
)
CAPTION_TOP50 = "Bars: how likely each token is under each model. Ticks: the odds it is actually sampled with, after "\
                "temperature, top-k and top-p. ▶: the token sampled by {ours}."

USAGE = """
### Use it from code
- Python: `from core import compare; report = compare("gpt2", "Hello, I'm a language model,", num_return_sequences=5)`
- CLI: `python -m core.parity --model gpt2 --reference pipeline` (exit 0 when the implementations agree)
- gradio_client: `Client(URL).predict(prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
  num_sequences, max_new_tokens, api_name="/run")`
"""

# The Training step tab
TRAIN_START = ("Press <b>Run training step</b>: one batch through the model and HuggingFace's in train mode (dropout "
               "off), the loss, every gradient, and the AdamW steps.")
CAPTION_TRAINING = (
    "Top: the loss on the batch before and after each AdamW step (build-nanogpt's: betas 0.9/0.95, eps 1e-8, decay "
    "0.1 on 2-D parameters), both sides, and |Δloss| against its tolerance (right axis). Bottom: each of HF's "
    "parameters, from the loss towards the embeddings: max |Δgradient| / tolerance (over 1, red: it differs); the "
    "diamonds are the gradient of the loss along the residual stream at each layer's input. The training bug lab's "
    "mistakes all pass the forward check.")

# The verdict panel while localisation runs (after the verdict that the models differ)
LOCALISING = "localising: running each block on HuggingFace's input and trying the catalogue of known mistakes…"
