"""The one error type users see: a one-line message, exit code 2."""

from __future__ import annotations


class RsftError(Exception):
    """Bad input or a failed stage, reported as one line naming the file, line or field.

    The CLI prints ``rsft: error: <message>`` and exits with code 2.
    """

    exit_code = 2


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix: ``file.jsonl:12: field 'prompt'``."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field {field!r}"
    return out
