"""The project's exception types: one line that names the problem and the fix."""

from __future__ import annotations


class MMLensError(Exception):
    """Base class for every error mmlens raises on purpose."""


class InputError(MMLensError, ValueError):
    """Bad input from the user: the message names the problem and how to fix it.

    >>> raise InputError("image 'cat.jpg' not found: pass an existing file path or a PIL image")
    Traceback (most recent call last):
    ...
    mmlens.errors.InputError: image 'cat.jpg' not found: pass an existing file path or a PIL image
    """

    def __init__(self, message: str) -> None:
        # Keep it to one line, whatever a caller formats into it.
        super().__init__(" ".join(str(message).split()))


class UnsupportedModelError(InputError):
    """The model's family has no adapter (the message lists the supported families)."""
