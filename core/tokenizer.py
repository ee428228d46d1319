"""tiktoken's `gpt2` encoding, built from a checkpoint's vocab.json + merges.txt or from tiktoken itself.

Knows text <-> token ids and how to show a token in a plot label; knows nothing about models. Sources, in
order: a directory holding vocab.json + merges.txt (every HF GPT-2 checkpoint) or encoder.json + vocab.bpe
(OpenAI's names); the directory in $GPT2_BPE_DIR; the Hub cache for a model id; tiktoken's own `gpt2`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from .errors import ParityLabError

ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
# sha256 of OpenAI's encoder.json / vocab.bpe (= HF vocab.json / merges.txt), as tiktoken checks them.
GPT2_HASHES = {
    "encoder": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
_FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
# How invisible characters are drawn in token labels.
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


class TokenizerNotAvailableError(ParityLabError, RuntimeError):
    """No GPT-2 BPE files could be found locally nor downloaded."""


class Tokenizer:
    """GPT-2 BPE: encode/decode like HF's GPT2TokenizerFast, plus readable per-token labels."""

    def __init__(self, encoding: tiktoken.Encoding, source: str, files: tuple[Path, Path] | None = None):
        self.encoding = encoding
        self.source = source
        self.files = files  # (encoder/vocab.json, merges) when built from files on disk
        self.eot_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab
        self._display_cache: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        # GPT-2's HF tokenizer treats "<|endoftext|>" in text as the special token; so do we.
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(int(token_id))

    def display(self, token_id: int) -> str:
        """A label for one token: spaces as ␣, newlines as ↵, tabs as ⇥, bytes that are not whole UTF-8 as <0xNN>."""
        token_id = int(token_id)
        shown = self._display_cache.get(token_id)
        if shown is None:
            shown = self._display_cache[token_id] = self._display(token_id)
        return shown

    def _display(self, token_id: int) -> str:
        if token_id == self.eot_id:
            return ENDOFTEXT
        text = self.token_bytes(token_id).decode("utf-8", errors="surrogateescape")
        out = []
        for ch in text:
            if "\udc80" <= ch <= "\udcff":  # a byte that is not (whole) UTF-8 on its own
                out.append(f"<0x{ord(ch) - 0xDC00:02X}>")
            elif ch in _VISIBLE:
                out.append(_VISIBLE[ch])
            elif not ch.isprintable():
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out)

    def display_many(self, ids) -> list[str]:
        return [self.display(i) for i in ids]

    def __repr__(self) -> str:
        return f"Tokenizer(gpt2, n_vocab={self.vocab_size}, source={self.source!r})"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bpe_files(directory: Path) -> tuple[Path, Path] | None:
    for encoder_name, merges_name in _FILE_NAMES:
        encoder, merges = directory / encoder_name, directory / merges_name
        if encoder.is_file() and merges.is_file():
            return encoder, merges
    return None


def from_bpe_files(encoder_json: str | os.PathLike, merges: str | os.PathLike) -> Tokenizer:
    """Build the encoding from local GPT-2 BPE files (tiktoken's own recipe for `gpt2`, with local paths)."""
    encoder_json, merges = Path(encoder_json), Path(merges)
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(merges), encoder_json_file=str(encoder_json))
    genuine = _sha256(encoder_json) == GPT2_HASHES["encoder"] and _sha256(merges) == GPT2_HASHES["merges"]
    from tiktoken_ext.openai_public import r50k_pat_str  # the split pattern tiktoken's gpt2 uses

    encoding = tiktoken.Encoding(
        name="gpt2" if genuine else "gpt2-custom",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: len(ranks)},
    )
    return Tokenizer(encoding, source=str(encoder_json.parent), files=(encoder_json, merges))


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Tokenizer:
    """GPT-2's tokenizer from a checkpoint directory, $GPT2_BPE_DIR, the Hub cache, or tiktoken's own `gpt2`."""
    tried = []
    candidates = []
    if name_or_path is not None and Path(name_or_path).expanduser().is_dir():
        candidates.append(Path(name_or_path).expanduser())
    if os.environ.get("GPT2_BPE_DIR"):
        candidates.append(Path(os.environ["GPT2_BPE_DIR"]).expanduser())
    for directory in candidates:
        files = _bpe_files(directory)
        if files:
            return from_bpe_files(*files)
        tried.append(f"{directory} (no vocab.json + merges.txt)")
    if name_or_path is not None and not Path(name_or_path).expanduser().is_dir():
        from .loader import ModelNotAvailableError, resolve_checkpoint

        try:
            files = _bpe_files(resolve_checkpoint(name_or_path))
            if files:
                return from_bpe_files(*files)
            tried.append(f"Hub model {name_or_path} (no vocab.json + merges.txt)")
        except ModelNotAvailableError as exc:
            tried.append(f"Hub model {name_or_path} ({exc})")
    try:
        return Tokenizer(tiktoken.get_encoding("gpt2"), source="tiktoken")
    except Exception as exc:  # tiktoken downloads the files on first use: offline that fails
        tried.append(f"tiktoken's gpt2 ({type(exc).__name__})")
    raise TokenizerNotAvailableError(
        "GPT-2's BPE files are not available. Tried: " + "; ".join(tried) + ". Point GPT2_BPE_DIR (or pass a "
        "directory) at a folder with vocab.json + merges.txt or encoder.json + vocab.bpe."
    )
