"""The one base class of every error `core` raises on purpose; knows nothing else.

Each message is meant for the person who gave the input (API caller, CLI user, dashboard visitor): the UI
shows it as a gr.Error, the CLIs print it and exit 2. Anything else escaping `core` is a bug.
"""


class ParityLabError(Exception):
    """Bad input or an unavailable resource, with a message that says what to do."""


USER_ERRORS = (ParityLabError,)
