"""Wording shared by log lines, replies, systemd status and the trainer's data errors."""
from __future__ import annotations


def one_line(text: str | BaseException, limit: int | None = None) -> str:
    """Runtime, YAML and payload messages can span lines; log lines, replies and STATUS= must not.

    The non-blank lines, stripped, joined with "; ". An exception gives its message, or its type's name when the
    message is empty. ``limit`` cuts the result to that many characters.
    """
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if limit is None else line[:limit]
