"""The errors that end `run` with a chosen exit code (edge.exitcodes), raised from any layer.

They sit at the bottom, next to the exit codes, so the capture, IO, web and publish layers can refuse to start
without importing the start-up code that catches them.
"""
from __future__ import annotations


class StartupError(Exception):
    """Config, bundle or source problem found before inspecting: exit 78 (EX_CONFIG), systemd does not restart."""


class StorageError(Exception):
    """storage.dir is full, read-only or unwritable: exit 75 (EX_TEMPFAIL), systemd restarts the service after a
    delay."""
