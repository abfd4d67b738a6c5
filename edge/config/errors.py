"""The one exception every config problem is reported with."""
from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))
