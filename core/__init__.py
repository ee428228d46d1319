"""GPT-2 Parity Lab core: a from-scratch GPT-2, its HF weight port, tokenizer, sampler and parity engine."""

from .errors import ParityLabError
from .loader import ModelNotAvailableError, load_hf_model, load_pair, load_pretrained
from .model import GPT, ContextLengthError, GPTConfig, KVCache, UnsupportedConfigError
from .port import PortError, port_from_hf
from .faults import FAULTS, TRAINING_FAULTS, FaultError, apply_fault, apply_training_fault
from .parity import ParityError, ParityReport, TrainingReport, compare, compare_training
from .sampling import Generation, SamplingSettings, SettingsError, StepRecord, StreamEvent, generate, stream
from .tokenizer import Tokenizer, TokenizerNotAvailableError, load_tokenizer

__all__ = [
    "ParityLabError",
    "GPT",
    "GPTConfig",
    "KVCache",
    "ContextLengthError",
    "UnsupportedConfigError",
    "PortError",
    "ModelNotAvailableError",
    "TokenizerNotAvailableError",
    "Tokenizer",
    "port_from_hf",
    "load_pretrained",
    "load_hf_model",
    "load_pair",
    "load_tokenizer",
    "generate",
    "stream",
    "Generation",
    "SamplingSettings",
    "SettingsError",
    "StepRecord",
    "StreamEvent",
    "compare",
    "compare_training",
    "TrainingReport",
    "ParityReport",
    "ParityError",
    "FAULTS",
    "FaultError",
    "apply_fault",
    "TRAINING_FAULTS",
    "apply_training_fault",
]
