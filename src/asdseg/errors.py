"""Exceptions that carry a message meant for the person who ran the tool.

Every message says what is wrong and what to do about it; the CLI prints it without a
traceback and exits non-zero.
"""


class AsdsegError(Exception):
    """Base class for errors caused by the user's input or set-up, not by a bug."""


class InputError(AsdsegError):
    """An input volume cannot be used (missing, unreadable, wrong shape, bad values)."""


class DeviceError(AsdsegError, ValueError):
    """The device asked for is unknown or not usable here (a ValueError too, as torch's own)."""


class ModelError(AsdsegError):
    """A model is unknown, its card is invalid, or its weights do not match the card."""


class NumericalError(AsdsegError):
    """A computation gave NaN or infinite values (diverged training, broken weights, overflow)."""


class CancelledError(AsdsegError):
    """The user cancelled a long-running operation."""
