"""Our tiktoken-based tokenizer against HF's GPT2TokenizerFast built from the very same vocab/merges."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tiktoken
from transformers import GPT2TokenizerFast

from core import TokenizerNotAvailableError, load_tokenizer
from core.tokenizer import BUNDLED_DIR, GPT2_HASHES

CORPUS = [
    "Hello, I'm a language model,",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\t\tnewlines\n\n\nand\r\nCRLF",
    "Contractions: I'm, you're, he's, we'll, they've, I'd, don't, can't, 'twas, Y'ALL'RE",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 0x1F 2026-11-24 1,000,000",
    "Unicode: naïve café façade Ελληνικά русский עברית العربية हिन्दी",
    "CJK: 日本語のテキスト 中文文本 한국어 텍스트",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "def f(x):\n    return x ** 2  # code with    indentation\n\tif x: pass\n",
    "{\"json\": [1, 2, {\"a\": null}], 'quotes': \"mixed\"}",
    "Mixed\u00a0non-breaking\u2009thin\u200bzero-width spaces",
    "Repeated!!!!!!!!!!!! ???? ........ ---- ==== ____",
    "A" * 300,
    "<|endoftext|>",
    "text before<|endoftext|>text after",
    "Control \x01\x02 and combining e\u0301 letters",
]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory, bpe_dir):
    """transformers 5 builds tokenizers with from_pretrained(dir): give it GPT-2's files under HF's names."""
    path = tmp_path_factory.mktemp("hf-tok")
    (path / "vocab.json").write_bytes((bpe_dir / "encoder.json").read_bytes())
    (path / "merges.txt").write_bytes((bpe_dir / "vocab.bpe").read_bytes())
    tok = GPT2TokenizerFast.from_pretrained(path)
    assert tok.vocab_size == 50257
    return tok


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_match_hf_and_round_trip(tokenizer, hf_tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids == hf_tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids) == hf_tokenizer.decode(ids)


def test_endoftext_is_the_special_token(tokenizer):
    assert tokenizer.encode("<|endoftext|>") == [50256]
    assert tokenizer.eot_id == 50256 and tokenizer.vocab_size == 50257
    assert tokenizer.display(50256) == "<|endoftext|>"


def test_built_encoding_is_tiktokens_gpt2(tokenizer, bpe_dir):
    """The shared files hash to what tiktoken checks for `gpt2`, so ours is that encoding exactly."""
    assert hashlib.sha256((bpe_dir / "encoder.json").read_bytes()).hexdigest() == GPT2_HASHES["encoder"]
    assert tokenizer.encoding.name == "gpt2"
    assert tokenizer.encoding.n_vocab == 50257


def test_display_strings_make_whitespace_visible(tokenizer):
    shown = [tokenizer.display(i) for i in tokenizer.encode(" hi\n\tü")]
    assert shown == ["␣hi", "↵", "⇥", "ü"]
    # a token that is only part of a UTF-8 character shows its bytes
    partial = [i for i in tokenizer.encode("日本") if not tokenizer.token_bytes(i).decode("utf-8", "ignore")]
    assert partial and all(tokenizer.display(i).startswith("<0x") for i in partial)
    assert tokenizer.display(tokenizer.encode("\x01")[0]) == "\\u0001"


def test_checkpoint_directory_vocab_is_used(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    assert tok.source == str(tiny_checkpoint)
    assert tok.encode("Hello world") == [15496, 995]


def _nothing_local(monkeypatch, tmp_path):
    """No BPE directory, an empty Hub cache and an empty tiktoken cache (the bundled copy stays)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))


def _seed_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """A Hub cache entry laid out as huggingface_hub writes it (refs/main -> snapshots/<commit>/<file>)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_with_nothing_local_the_bundled_copy_is_gpt2(monkeypatch, tmp_path, bpe_dir, hf_tokenizer):
    """Any machine, offline, no directory: the bundled files, byte for byte GPT-2's, give HF's ids."""
    _nothing_local(monkeypatch, tmp_path)
    tok = load_tokenizer()
    assert tok.source.startswith("bundled")
    assert tok.encoding.name == "gpt2"
    for name in ("encoder.json", "vocab.bpe"):
        assert (BUNDLED_DIR / name).read_bytes() == (bpe_dir / name).read_bytes()
    for text in CORPUS:
        assert tok.encode(text) == hf_tokenizer.encode(text)


def test_a_modified_bundled_copy_is_refused(monkeypatch, tmp_path):
    import core.tokenizer

    _nothing_local(monkeypatch, tmp_path)
    broken = tmp_path / "bundled"
    shutil.copytree(BUNDLED_DIR, broken)
    merges = (broken / "vocab.bpe").read_bytes()
    (broken / "vocab.bpe").write_bytes(merges[:-2] + b"x\n")  # one merge changed
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", broken)
    with pytest.raises(TokenizerNotAvailableError, match="sha256 mismatch") as info:
        load_tokenizer()
    assert "GPT2_BPE_DIR" in str(info.value)
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", tmp_path / "missing")
    with pytest.raises(TokenizerNotAvailableError, match="missing"):
        load_tokenizer()


def test_a_cached_gpt2_in_the_hub_cache_is_used(monkeypatch, tmp_path, bpe_dir):
    """The README's promise: GPT-2's vocab.json + merges.txt of any cached GPT-2 serve offline."""
    import core.tokenizer

    _nothing_local(monkeypatch, tmp_path)
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", tmp_path / "missing")  # so only the cache can serve
    _seed_hub_cache(tmp_path / "hub-cache", "distilbert/distilgpt2",
                    {"vocab.json": (bpe_dir / "encoder.json").read_bytes(),
                     "merges.txt": (bpe_dir / "vocab.bpe").read_bytes()})
    tok = load_tokenizer()
    assert tok.source == "Hub cache (distilbert/distilgpt2)"
    assert tok.encode("Hello world") == [15496, 995]


def test_a_hub_ids_own_cached_files_come_first(monkeypatch, tmp_path, bpe_dir):
    """load_tokenizer(hub id): that model's own files from the cache, even a vocabulary that is not GPT-2's."""
    _nothing_local(monkeypatch, tmp_path)
    encoder = json.loads((bpe_dir / "encoder.json").read_text())
    merges = (bpe_dir / "vocab.bpe").read_text().rstrip("\n").split("\n")
    dropped = "".join(merges[-1].split(" "))  # the last merge and its token: a vocabulary that is not GPT-2's
    assert encoder.pop(dropped) == 50255
    _seed_hub_cache(tmp_path / "hub-cache", "someone/smaller-bpe",
                    {"vocab.json": json.dumps(encoder).encode(), "merges.txt": ("\n".join(merges[:-1]) + "\n").encode()})
    tok = load_tokenizer("someone/smaller-bpe")
    assert tok.encoding.name == "gpt2-custom" and "someone--smaller-bpe" in tok.source
    assert tok.vocab_size == 50256 and tok.encode("Hello world") == [15496, 995]
    # not cached and offline: the next source ($GPT2_BPE_DIR here)
    monkeypatch.setenv("GPT2_BPE_DIR", str(bpe_dir))
    assert load_tokenizer("someone/not-cached").source == str(bpe_dir)


def test_falls_back_to_tiktokens_own_cache(monkeypatch, tmp_path, bpe_dir):
    """tiktoken's download cache is read directly (tiktoken would try the network for a missing file)."""
    import core.tokenizer

    _nothing_local(monkeypatch, tmp_path)
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", tmp_path / "missing")
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("encoder.json", "vocab.bpe"):
        key = hashlib.sha1((base + name).encode()).hexdigest()  # how tiktoken names its cache files
        (cache / key).write_bytes((bpe_dir / name).read_bytes())
    tok = load_tokenizer()
    assert tok.source == f"tiktoken cache ({cache})"
    text = "Hello, I'm a language model, 日本 😀"
    monkeypatch.setattr("tiktoken.registry.ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")  # tiktoken itself, reading the same cache (files present: no network)
    assert tok.encode(text) == reference.encode(text)

