"""The one error type users see: a one-line message, exit code 2."""

from __future__ import annotations


class RsftError(Exception):
    """Bad input or a failed stage, reported as one line naming the file, line or field.

    The CLI prints ``rsft: error: <message>`` and exits with code 2.
    """

    exit_code = 2


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException) -> str:
    """``Type: first line`` of an exception (``Type`` alone when it has no message)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix: ``file.jsonl:12: field 'prompt'``."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field {field!r}"
    return out
