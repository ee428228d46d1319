"""Our tiktoken-based tokenizer against HF's GPT2TokenizerFast built from the very same vocab/merges."""

import hashlib

import pytest
import tiktoken
from transformers import GPT2TokenizerFast

from core import TokenizerNotAvailableError, load_tokenizer
from core.tokenizer import GPT2_HASHES

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
    shown = tokenizer.display_many(tokenizer.encode(" hi\n\tü"))
    assert shown == ["␣hi", "↵", "⇥", "ü"]
    # a token that is only part of a UTF-8 character shows its bytes
    partial = [i for i in tokenizer.encode("日本") if not tokenizer.token_bytes(i).decode("utf-8", "ignore")]
    assert partial and all(tokenizer.display(i).startswith("<0x") for i in partial)
    assert tokenizer.display(tokenizer.encode("\x01")[0]) == "\\u0001"


def test_checkpoint_directory_vocab_is_used(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    assert tok.source == str(tiny_checkpoint)
    assert tok.encode("Hello world") == [15496, 995]


def _offline_tiktoken(monkeypatch, cache_dir):
    """No BPE directory, an empty tiktoken cache, and downloads failing the way they do offline."""
    import tiktoken.load
    import tiktoken.registry

    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    real_read_file = tiktoken.load.read_file

    def no_network(blobpath):
        if blobpath.startswith(("http://", "https://")):
            raise ConnectionError(f"offline: {blobpath}")
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)


def test_offline_without_files_is_a_clear_error(monkeypatch, tmp_path):
    _offline_tiktoken(monkeypatch, tmp_path)
    with pytest.raises(TokenizerNotAvailableError, match="GPT2_BPE_DIR"):
        load_tokenizer()


def test_falls_back_to_tiktokens_own_cached_gpt2(monkeypatch, tmp_path, bpe_dir):
    """With no directory given, tiktoken's own gpt2 is used; seed its cache the way tiktoken names files."""
    _offline_tiktoken(monkeypatch, tmp_path)
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("encoder.json", "vocab.bpe"):
        key = hashlib.sha1((base + name).encode()).hexdigest()
        (tmp_path / key).write_bytes((bpe_dir / name).read_bytes())
    tok = load_tokenizer()
    assert tok.source == "tiktoken"
    text = "Hello, I'm a language model, 日本 😀"
    assert tok.encode(text) == load_tokenizer(bpe_dir).encode(text)
    assert isinstance(tok.encoding, tiktoken.Encoding)
