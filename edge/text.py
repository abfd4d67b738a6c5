"""Wording shared by log lines, replies and systemd status."""
from __future__ import annotations


def one_line(text: str) -> str:
    """Runtime and YAML messages can span lines; log lines, replies and STATUS= must not."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
