"""Loading the config file: read the YAML, validate it against the schema, report every problem at once."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edge.config.errors import ConfigError
from edge.config.schema import Config
from edge.config.yaml_reader import YamlReader, format_errors
from edge.core.files import read_limited

# A config file is a few kilobytes; anything this large is not one (and is never read whole).
MAX_CONFIG_BYTES = 1024 * 1024


def _fill_sections(data: dict, model: type[BaseModel]) -> None:
    """Give absent or empty sections an empty mapping so they are validated with context."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        # "mqtt:" with every sub-key commented out reads as null; treat it as empty.
        if data.get(name) is None:
            data[name] = {}
        if isinstance(data[name], dict):
            _fill_sections(data[name], annotation)


def parse_config(
    text: str, filename: str = "config.yaml", base_dir: Path | None = None
) -> Config:
    """Validate YAML ``text`` and return the configuration.

    ``filename`` only appears in error messages. Relative paths are resolved
    against ``base_dir`` (default: the current directory). Raises ConfigError
    listing every problem as ``FILENAME:LINE: key.path: message``.
    """
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    reader = YamlReader(filename)
    data = reader.read(text)
    _fill_sections(data, Config)
    errors = list(reader.errors)
    try:
        config = Config.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        errors.extend(format_errors(exc, reader))
    else:
        if not errors:
            return config
    errors.sort(key=lambda item: item[0])  # stable: keeps the order within a line
    raise ConfigError([message for _, message in errors])


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the config file at ``path``.

    Relative paths inside it are resolved against the file's directory.
    Raises ConfigError, also when the file cannot be read, is not a regular file or exceeds MAX_CONFIG_BYTES.
    """
    name = os.fspath(path)
    try:
        # utf-8-sig: tolerate the byte-order mark some Windows editors add. A FIFO or device is refused.
        text = read_limited(name, MAX_CONFIG_BYTES).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: cannot read config file: not UTF-8 text"]) from None
    return parse_config(text, filename=name, base_dir=Path(name).absolute().parent)
