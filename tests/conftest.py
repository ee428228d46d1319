"""Shared fixtures: random-init HF GPT-2 checkpoints made on the spot (core.structured.random_gpt2, the one recipe
for a random GPT-2), GPT-2's genuine BPE files, the stand-in Hub that the Hub tests in tests/app and tests/cli
share, and the result files that the upload tests in tests/app and tests/browser share."""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Which kernel runs our fp32 linears is decided by a timing check at the first forward (core/kernels.py): on a busy
# machine it can tip, and with it whether HF's reference runs beside ours and which layers are bit-identical. The
# suite pins oneDNN, so every run expects the same bits; tests/core/test_kernels.py tests the check itself.
os.environ.setdefault("PARITY_LAB_LINEAR", "onednn")

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bpe_dir() -> Path:
    for candidate in (os.environ.get("GPT2_BPE_DIR"), ROOT.parent / "shared" / "gpt2-bpe"):
        if candidate and (Path(candidate) / "encoder.json").is_file():
            return Path(candidate)
    raise RuntimeError("GPT-2 BPE files not found: set GPT2_BPE_DIR or keep ../shared/gpt2-bpe beside the repo")


BPE_DIR = _bpe_dir()
os.environ["GPT2_BPE_DIR"] = str(BPE_DIR)

# Shapes used across the suite. "tiny" keeps GPT-2's vocabulary so the real tokenizer applies.
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=128)
ODD = dict(n_layer=3, n_head=5, n_embd=80, n_positions=96)
DISTIL = dict(n_layer=6, n_head=12, n_embd=768, n_positions=1024)
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
# GPT-2's width in two blocks: the decode-sized products at their real shapes (MKL threads them; SDPA's one-query
# kernel splits the keys across threads), without the cost of twelve blocks.
WIDE = dict(n_layer=2, n_head=12, n_embd=768, n_positions=160)


def run_cli(capsys, *args):
    """main_parity in-process -> (exit status, stdout, stderr); argparse's own errors raise SystemExit."""
    from core.cli import main_parity

    try:
        code = main_parity([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def hf_generate(hf, ids, seed, **kwargs) -> list[list[int]]:
    """HF's side, called the way users call it: seed the global RNG, then generate."""
    x = torch.tensor([ids])
    torch.manual_seed(seed)
    return hf.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs).tolist()


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    return BPE_DIR


@pytest.fixture(scope="session")
def tokenizer():
    from core import load_tokenizer

    return load_tokenizer(BPE_DIR)


@pytest.fixture(scope="session")
def tiny_hf():
    from core.structured import random_gpt2

    return random_gpt2(seed=0, **TINY)


@pytest.fixture(scope="session")
def tiny_pair(tiny_hf):
    from core import port_from_hf

    return port_from_hf(tiny_hf), tiny_hf


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_hf):
    """A save_pretrained directory of the tiny model, with GPT-2's vocab.json/merges.txt beside it."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_hf.save_pretrained(path)
    (path / "vocab.json").write_bytes((BPE_DIR / "encoder.json").read_bytes())
    (path / "merges.txt").write_bytes((BPE_DIR / "vocab.bpe").read_bytes())
    return path


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory, bpe_dir):
    """A save_pretrained directory of the ODD-shaped model, served as gpt2-medium by the stand-in Hub."""
    from core.structured import random_gpt2

    path = tmp_path_factory.mktemp("odd-gpt2")
    random_gpt2(seed=1, **ODD).save_pretrained(path)
    (path / "vocab.json").write_bytes((bpe_dir / "encoder.json").read_bytes())
    (path / "merges.txt").write_bytes((bpe_dir / "vocab.bpe").read_bytes())
    return path


@pytest.fixture(scope="module")
def hub(tiny_checkpoint, odd_checkpoint):
    """The stand-in Hub (fake_hub.py) on 127.0.0.1 with the repos the Hub tests ask for, one per module."""
    from fake_hub import FakeHub, checkpoint_files

    files = checkpoint_files(tiny_checkpoint)
    files["README.md"] = b"# a model card nobody needs to download\n"
    files["pytorch_model.bin"] = b"pickled weights that must never be fetched"
    config = json.loads(files["config.json"])
    with FakeHub(max_stall_s=30) as hub:
        hub.add_repo("openai-community/gpt2", files, alias="gpt2")
        hub.add_repo("openai-community/gpt2-medium", checkpoint_files(odd_checkpoint), alias="gpt2-medium")
        hub.add_repo("distilbert/distilgpt2", files, alias="distilgpt2")
        hub.add_repo("google-bert/bert-base-uncased", {"config.json": json.dumps({"model_type": "bert"}).encode(),
                                                       "model.safetensors": b"\0" * 4096})
        hub.add_repo("someone/gpt2-bin-only", {"config.json": json.dumps(config).encode(),
                                               "pytorch_model.bin": b"pickle"})
        hub.add_repo("someone/gated-gpt2", files, gated=True)
        hub.add_repo("someone/gpt2-cross-attention", {**files, "config.json": json.dumps(
            {**config, "add_cross_attention": True}).encode()})
        yield hub


@pytest.fixture(scope="module")
def tiny_app_reference():
    """What the dashboard computes for its built-in tiny model and a small case (the server builds the reference
    for the cases a result names), computed here independently."""
    from core.parity.dump import export_reference
    from demo import upload
    from demo.models import TINY, build_tiny_pair
    from core import load_tokenizer

    ours_t, hf_t = build_tiny_pair()
    tok = load_tokenizer(None)
    small = {**upload.SEED_SETTINGS, "num_return_sequences": 2, "max_length": None, "max_new_tokens": 4}
    case = upload.Case("case0", upload.SEED_PROMPT, tok.encode(upload.SEED_PROMPT), small)
    return ours_t, export_reference(hf_t, [case], model=TINY, layers=True, tokenizer=tok)


@pytest.fixture(scope="module")
def upload_files(tiny_app_reference, tmp_path_factory):
    """Result files for the dashboard's upload panel: one that agrees, one with a late-block bug, one not tensors."""
    from core.faults import apply_fault
    from core.parity.dump import result_from_gpt, save_result

    ours_t, ref = tiny_app_reference
    folder = tmp_path_factory.mktemp("uploads")
    good = save_result(folder / "good.safetensors", *result_from_gpt(ours_t, ref))
    bad = save_result(folder / "late_block_bug.safetensors",
                      *result_from_gpt(apply_fault(ours_t, "untied_lm_head"), ref, sampled=False))
    text = folder / "notes.safetensors"
    text.write_text("not tensors at all, just some text")
    return {"good": good, "bad": bad, "text": text}
