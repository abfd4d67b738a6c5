"""Field helpers shared by the config sections: file paths and bounds that depend on another key."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo


def _reject_empty_path(value: Any) -> Any:
    # Path("") silently means "the current directory"; that is never intended.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


FilePath = Annotated[Path, BeforeValidator(_reject_empty_path)]


def base_dir(info: ValidationInfo) -> Path:
    """Directory that relative paths are resolved against."""
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


def resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make ``path`` absolute relative to the config file's directory."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base_dir(info) / path


def not_below(value: float, info: ValidationInfo, section: str, other: str) -> float:
    """A bound that depends on another key of the same section (validated before this one)."""
    low = info.data.get(other)
    if low is not None and value < low:
        raise ValueError(f"must be >= {section}.{other} ({low}), got {value}")
    return value
