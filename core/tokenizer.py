"""tiktoken's `gpt2` encoding, built from GPT-2's BPE files wherever they are (always at least the bundled copy).

Knows text <-> token ids and how to show a token in a plot label; knows nothing about models. Sources, in
order: a directory holding vocab.json + merges.txt (every HF GPT-2 checkpoint) or encoder.json + vocab.bpe
(OpenAI's names); a Hub model id's own files (Hub cache, else downloaded in bounded time); the directory in
$GPT2_BPE_DIR; any cached GPT-2 in the Hub cache; tiktoken's download cache; the copy bundled in
core/gpt2_bpe (verified by sha256). The last four are used only when their sha256 is GPT-2's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from .errors import ParityLabError

ENDOFTEXT = "<|endoftext|>"
# sha256 of OpenAI's encoder.json / vocab.bpe (= HF vocab.json / merges.txt), as tiktoken checks them.
GPT2_HASHES = {
    "encoder": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
_FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
BUNDLED_DIR = Path(__file__).resolve().parent / "gpt2_bpe"
# Hub repos whose vocab.json/merges.txt are GPT-2's, looked for in the Hub cache as a fallback.
_HUB_GPT2_REPOS = ("openai-community/gpt2", "gpt2", "distilbert/distilgpt2", "distilgpt2", "openai-community/gpt2-medium",
                   "gpt2-medium", "openai-community/gpt2-large", "gpt2-large", "openai-community/gpt2-xl", "gpt2-xl")
# Where tiktoken fetches `gpt2` from; its cache names each file by the sha1 of this URL.
_TIKTOKEN_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
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
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(merges), encoder_json_file=str(encoder_json))
    except Exception as exc:  # noqa: BLE001 - unreadable, or merges and vocabulary that do not match
        raise TokenizerNotAvailableError(f"{encoder_json} + {merges} are not usable GPT-2 BPE files "
                                         f"({type(exc).__name__})") from None
    genuine = _sha256(encoder_json) == GPT2_HASHES["encoder"] and _sha256(merges) == GPT2_HASHES["merges"]
    from tiktoken_ext.openai_public import r50k_pat_str  # the split pattern tiktoken's gpt2 uses

    encoding = tiktoken.Encoding(
        name="gpt2" if genuine else "gpt2-custom",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: len(ranks)},
    )
    return Tokenizer(encoding, source=str(encoder_json.parent), files=(encoder_json, merges))


def _genuine(files: tuple[Path, Path]) -> bool:
    return _sha256(files[0]) == GPT2_HASHES["encoder"] and _sha256(files[1]) == GPT2_HASHES["merges"]


def _hub_files(repo_id: str, *, download: bool) -> tuple[Path, Path] | None:
    """vocab.json + merges.txt of a Hub repo from the Hub cache (no network), or downloaded when `download`."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = [try_to_load_from_cache(repo_id, name) for name in _FILE_NAMES[0]]
    except Exception:  # noqa: BLE001 - an invalid repo id, an unreadable cache: not there
        cached = [None, None]
    if all(isinstance(c, str) for c in cached):
        return Path(cached[0]), Path(cached[1])
    if not download:
        return None
    from huggingface_hub import hf_hub_download

    from .loader import Budget, _bound_hub_requests, _hub_call, hub_budget_s

    _bound_hub_requests()
    budget = Budget.start(hub_budget_s())
    return tuple(Path(_hub_call(repo_id, name, budget, hf_hub_download, repo_id=repo_id, filename=name))
                 for name in _FILE_NAMES[0])


def _tiktoken_cache_files() -> tuple[Path, Path] | None:
    """GPT-2's files in tiktoken's download cache, read directly (tiktoken itself would download when missing)."""
    import hashlib
    import tempfile

    folder = next((os.environ[v] for v in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR") if v in os.environ),
                  os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    if not folder:  # tiktoken's "no cache"
        return None
    paths = tuple(Path(folder) / hashlib.sha1((_TIKTOKEN_BASE + n).encode()).hexdigest() for n in _FILE_NAMES[1])
    return paths if all(p.is_file() for p in paths) else None


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Tokenizer:
    """GPT-2's tokenizer: a checkpoint directory's own files, a Hub id's, $GPT2_BPE_DIR, the Hub or tiktoken
    cache, else the bundled copy. Only a Hub id that is not cached is downloaded (its two BPE files, bounded)."""
    from huggingface_hub import constants

    tried: list[str] = []
    given = Path(name_or_path).expanduser() if name_or_path is not None else None
    if given is not None and given.is_dir():
        files = _bpe_files(given)
        if files:
            return from_bpe_files(*files)
        tried.append(f"{given} (no vocab.json + merges.txt)")
    elif name_or_path is not None:
        from .loader import ModelNotAvailableError, is_local_name

        if is_local_name(name_or_path):
            tried.append(f"{name_or_path} (no such directory)")
        else:
            try:
                files = _hub_files(str(name_or_path), download=not constants.is_offline_mode())
                if files:
                    return from_bpe_files(*files)
                tried.append(f"Hub model {name_or_path} (not in the Hub cache; offline)")
            except ModelNotAvailableError as exc:
                tried.append(f"Hub model {name_or_path} ({exc.what})")
    if os.environ.get("GPT2_BPE_DIR"):
        directory = Path(os.environ["GPT2_BPE_DIR"]).expanduser()
        files = _bpe_files(directory)
        if files:
            return from_bpe_files(*files)
        tried.append(f"$GPT2_BPE_DIR={directory} (no vocab.json + merges.txt)")
    for repo_id in _HUB_GPT2_REPOS:
        files = _hub_files(repo_id, download=False)
        if files and _genuine(files):
            tok = from_bpe_files(*files)
            tok.source = f"Hub cache ({repo_id})"
            return tok
    tried.append("the Hub cache (no GPT-2 vocab.json + merges.txt)")
    files = _tiktoken_cache_files()
    if files and _genuine(files):
        tok = from_bpe_files(*files)
        tok.source = f"tiktoken cache ({files[0].parent})"
        return tok
    tried.append("tiktoken's cache (no gpt2 files)")
    files = _bpe_files(BUNDLED_DIR)
    if files and _genuine(files):
        tok = from_bpe_files(*files)
        tok.source = f"bundled ({BUNDLED_DIR})"
        return tok
    tried.append(f"the bundled copy in {BUNDLED_DIR} ({'sha256 mismatch: modified' if files else 'missing'})")
    raise TokenizerNotAvailableError(
        "GPT-2's BPE files are not available. Tried: " + "; ".join(tried) + ". Point GPT2_BPE_DIR (or pass a "
        "directory) at a folder with vocab.json + merges.txt or encoder.json + vocab.bpe, or restore "
        "core/gpt2_bpe from the repository."
    )
