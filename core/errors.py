"""The one base class of every error `core` raises on purpose, and the typed "model not available" error.

Each message is meant for the person who gave the input (API caller, CLI user, dashboard visitor): the UI
shows it as a gr.Error, the CLIs print it and exit 2. Anything else escaping `core` is a bug. Knows nothing
about where the message is shown: a front end that cannot act on the CLI advice picks its own wording from
`ModelNotAvailableError.reason` and `.what`.
"""

from __future__ import annotations


class ParityLabError(Exception):
    """Bad input or an unavailable resource, with a message that says what to do."""


USER_ERRORS = (ParityLabError,)

# Why a model could not be had, one word each (ModelNotAvailableError.reason).
REASONS = (
    "local",  # a local path that is not a usable checkpoint directory
    "offline",  # Hub access switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and nothing cached
    "unreachable",  # no connection to the Hub (DNS, refused, network down) and nothing cached
    "timeout",  # the Hub stopped answering, or the load went past its time budget
    "server_error",  # the Hub answered with an HTTP error status (5xx, 429, ...) or not like a Hub
    "not_found",  # no such model (or revision) on the Hub; `suggestions` holds close known names
    "gated",  # gated or private: needs an account that was granted access
    "not_gpt2",  # its config.json is not GPT-2's (checked before any weight is downloaded)
    "no_safetensors",  # no safetensors weights (pickled .bin files are never downloaded)
)


class ModelNotAvailableError(ParityLabError, RuntimeError):
    """A checkpoint could not be found locally nor downloaded.

    `what` says what happened (naming the model and what was attempted); `str(exc)` adds what to do from code
    or a command line (`todo`). `reason` is one of REASONS, `status` the HTTP status when the Hub sent one,
    `suggestions` close model names for a typo, `model` the name as given.
    """

    def __init__(self, what: str, todo: str = "", *, model: str | None = None, reason: str = "local",
                 status: int | None = None, suggestions: tuple[str, ...] = ()):
        assert reason in REASONS, reason
        self.what, self.todo, self.model, self.reason = what, todo, model, reason
        self.status, self.suggestions = status, tuple(suggestions)
        super().__init__(f"{what}. {todo}" if todo else what)


class HubTimeoutError(ModelNotAvailableError, TimeoutError):
    """The Hub stopped answering, or a model's download went past its time budget (reason 'timeout')."""
