"""Loading the config file: read the YAML, validate it against the schema, report every problem at once."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edge.config.errors import ConfigError
from edge.config.schema import Config
from edge.config.yaml_reader import YamlReader, error_paths, format_errors
from edge.core.files import read_limited

# A config file is a few kilobytes; anything this large is not one (and is never read whole).
MAX_CONFIG_BYTES = 1024 * 1024
REPAIR_ATTEMPTS = 4  # rounds of leaving out keys in error (an error can hide one below it)


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


@dataclass
class Checked:
    """A config file as `check-config` sees it: the key errors (line, message), the config (with the keys in
    error left out, so their defaults stand in, when that validates: the later checks then run in the same
    pass), the keys in error and the reader that knows every key's line."""

    config: Config | None
    errors: list[tuple[int, str]]
    bad_keys: list[tuple]
    reader: YamlReader


def check_text(text: str, filename: str = "config.yaml", base_dir: Path | None = None) -> Checked:
    """Validate YAML ``text``; ConfigError only for a file that cannot be read as settings at all."""
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    reader = YamlReader(filename)
    data = reader.read(text)
    _fill_sections(data, Config)
    errors, bad_keys, trial = list(reader.errors), [], _copy(data)
    for attempt in range(REPAIR_ATTEMPTS):
        try:
            config = Config.model_validate(trial, context={"base_dir": base})
        except ValidationError as exc:
            if attempt == 0:
                errors.extend(format_errors(exc, reader))
            paths = error_paths(exc)
            bad_keys += [path for path, _ in paths]
            if any(missing for _, missing in paths) or not all(_drop(trial, path) for path, _ in paths):
                break  # a required key is absent: nothing to stand in for it
        else:
            errors.sort(key=lambda item: item[0])  # stable: keeps the order within a line
            return Checked(config, errors, bad_keys, reader)
    errors.sort(key=lambda item: item[0])
    return Checked(None, errors, bad_keys, reader)


def _copy(data):
    """A copy of the dicts and lists; the values themselves (such as the reader's marker of an unreadable one,
    compared by identity) are kept."""
    if isinstance(data, dict):
        return {key: _copy(value) for key, value in data.items()}
    return [_copy(value) for value in data] if isinstance(data, list) else data


def _drop(data: dict, path: tuple) -> bool:
    """Leave the key at ``path`` out of ``data``; False when it is not there to leave out."""
    for part in path[:-1]:
        data = data.get(part) if isinstance(data, dict) else data[part] if isinstance(data, list) else None
        if data is None:
            return False
    if isinstance(data, dict) and path and path[-1] in data:
        del data[path[-1]]
        return True
    return False


def parse_config(
    text: str, filename: str = "config.yaml", base_dir: Path | None = None
) -> Config:
    """Validate YAML ``text`` and return the configuration.

    ``filename`` only appears in error messages. Relative paths are resolved
    against ``base_dir`` (default: the current directory). Raises ConfigError
    listing every problem as ``FILENAME:LINE: key.path: message``.
    """
    checked = check_text(text, filename, base_dir)
    if checked.errors:
        raise ConfigError([message for _, message in checked.errors])
    return checked.config


def read_config_text(path: str | os.PathLike) -> str:
    """The config file's text; ConfigError when it cannot be read, is not a regular file or is too large."""
    name = os.fspath(path)
    try:
        # utf-8-sig: tolerate the byte-order mark some Windows editors add. A FIFO or device is refused.
        return read_limited(name, MAX_CONFIG_BYTES).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: cannot read config file: not UTF-8 text"]) from None


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the config file at ``path``.

    Relative paths inside it are resolved against the file's directory.
    Raises ConfigError, also when the file cannot be read, is not a regular file or exceeds MAX_CONFIG_BYTES.
    """
    name = os.fspath(path)
    return parse_config(read_config_text(name), filename=name, base_dir=Path(name).absolute().parent)
