"""Reading config.yaml with line numbers, and wording every problem as ``FILE:LINE: key.path: message``.

The file is validated in a single pass and every problem is reported at once, one per line, so that field
engineers can fix all mistakes before the service is restarted.
"""
from __future__ import annotations

import difflib
import warnings
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from edge.config.broker import MqttConfig
from edge.config.errors import ConfigError
from edge.config.schema import Config

# --------------------------------------------------------------------------
# YAML reading with line numbers

_INVALID = object()  # stands in for a value already reported as unreadable
_MAX_NODES = 100_000  # guards against alias expansion bombs
_NULL_TAG = "tag:yaml.org,2002:null"


class YamlReader:
    """Turns YAML text into plain data, remembering the line of every key and list item."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[tuple[int, str]] = []
        # Line of every key (and of every list item), by key path.
        self.lines: dict[tuple, int] = {}
        self._yaml = YAML(typ="safe", pure=True)
        self._nodes = 0

    def error(self, line: int, path: tuple, message: str) -> None:
        prefix = f"{_path_str(path)}: " if path else ""
        self.errors.append((line, f"{self.filename}:{line}: {prefix}{message}"))

    def read(self, text: str) -> dict:
        """Parse ``text``; raises ConfigError for problems that stop parsing altogether."""
        with warnings.catch_warnings():
            # Reused anchors and similar are legal YAML; warnings would only clutter the log.
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            root = self._compose(text)
            if root is None or (isinstance(root, ScalarNode) and str(root.tag) == _NULL_TAG):
                return {}  # an empty file means "all defaults" (the default folder source still needs a path)
            if not isinstance(root, MappingNode):
                what = "a list" if isinstance(root, SequenceNode) else f"the value {_show(root.value)}"
                raise ConfigError(
                    [f"{self.filename}:{_line(root)}: the document must be a mapping of "
                     f"settings (key: value), got {what}"]
                )
            try:
                return self._mapping(root, (), frozenset())
            except _TooLarge:
                raise ConfigError(
                    [f"{self.filename}:1: the document expands to too many values (alias loop?)"]
                ) from None

    def _compose(self, text: str) -> Node | None:
        try:
            return self._yaml.compose(text)
        except YAMLError as exc:
            raise ConfigError([self._syntax_error(exc, text)]) from None
        except RecursionError:
            raise ConfigError([f"{self.filename}:1: the document is nested too deeply"]) from None

    def _syntax_error(self, exc: YAMLError, text: str) -> str:
        line = 1
        if isinstance(exc, MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            detail = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                detail = f"{exc.problem} ({exc.context})"
        elif isinstance(exc, ReaderError):
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            detail = str(exc).splitlines()[0]
        else:
            detail = (str(exc).splitlines() or ["invalid YAML"])[0]
        detail = " ".join(str(detail).split())
        return f"{self.filename}:{line}: YAML syntax error: {detail}"

    def _convert(self, node: Node, path: tuple, active: frozenset) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _TooLarge
        if id(node) in active:
            self.error(_line(node), path, "an alias refers to itself")
            return _INVALID
        if isinstance(node, MappingNode):
            return self._mapping(node, path, active | {id(node)})
        if isinstance(node, SequenceNode):
            return self._sequence(node, path, active | {id(node)})
        return self._scalar(node, path)

    def _mapping(self, node: MappingNode, path: tuple, active: frozenset) -> dict:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                self.error(line, path, "keys must be plain names, not lists or mappings")
                continue
            key = str(key_node.value)
            key_path = path + (key,)
            if key in first_seen:
                # Report and keep going so every other problem is reported too.
                self.error(line, key_path, f"duplicate key {key!r} (first set on line {first_seen[key]})")
                continue
            first_seen[key] = line
            self.lines[key_path] = line
            result[key] = self._convert(value_node, key_path, active)
        return result

    def _sequence(self, node: SequenceNode, path: tuple, active: frozenset) -> list:
        items = []
        for index, child in enumerate(node.value):
            self.lines[path + (index,)] = _line(child)
            items.append(self._convert(child, path + (index,), active))
        return items

    def _scalar(self, node: Node, path: tuple) -> Any:
        try:
            return self._yaml.constructor.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - ruamel's converters fail in many ways on odd tags
            detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.error(_line(node), path, f"cannot read value: {' '.join(str(detail).split())}")
            return _INVALID

    def line_for(self, loc: tuple) -> int:
        """Line of ``loc``, or of its nearest ancestor present in the file."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1


class _TooLarge(Exception):
    pass


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _path_str(path: tuple) -> str:
    parts = [str(p) if str(p).isprintable() else repr(str(p)) for p in path]
    return ".".join(parts)


# --------------------------------------------------------------------------
# Error messages

_PASSWORD_HINT = (
    "inline passwords are not supported; put the password in the environment variable "
    "named by mqtt.password_env, in mqtt.password_file, or in a systemd credential "
    "named mqtt_password (LoadCredential=)"
)


def _show(value: Any) -> str:
    """Short, single-line rendering of a user-supplied value."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _walk(loc: tuple) -> tuple[tuple, type[BaseModel] | None]:
    """``loc`` as the file spells it, and the section model it ends in, if any.

    After a discriminated union (``source``) pydantic puts the tag in the path: source.camera.url is the file's
    source.url, checked against the camera's settings.
    """
    model: type[BaseModel] | None = Config
    shown, rest = [], list(loc)
    while rest:
        part = rest.pop(0)
        shown.append(part)
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        model = None
        if field is not None and field.discriminator is not None and rest:
            model = _variants(field).get(rest.pop(0))
        elif field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
    return tuple(shown), model


def _variants_at(path: tuple) -> dict[Any, type[BaseModel]]:
    """The models by tag when ``path`` is a discriminated union's field (source), else none."""
    if not path:
        return {}
    model = _walk(path[:-1])[1]
    field = model.model_fields.get(path[-1]) if model is not None and isinstance(path[-1], str) else None
    return _variants(field) if field is not None and field.discriminator is not None else {}


def _variants(field: FieldInfo) -> dict[Any, type[BaseModel]]:
    """A discriminated union's models by their tag."""
    return {get_args(model.model_fields[field.discriminator].annotation)[0]: model
            for model in get_args(field.annotation)}


def _unknown_key(loc: tuple) -> str:
    key = str(loc[-1])
    model = _walk(loc[:-1])[1]
    message = f"unknown key {key!r}"
    if model is MqttConfig and key == "password":
        return f"{message}: {_PASSWORD_HINT}"
    if model is None:
        return message
    variants = _variants_at(loc[:-2])
    others = sorted(tag for tag, other in variants.items() if other is not model and key in other.model_fields)
    if others:
        # A key of another kind, as in a config written before each kind had its own keys.
        which = f"kinds {', '.join(others)} take" if len(others) > 1 else f"kind {others[0]} takes"
        return f"{message} for {_path_str(_walk(loc[:-2])[0])}.kind {loc[-2]}: only {which} it"
    names = list(model.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    return f"{message}; expected one of: {', '.join(names)}"


_TYPE_MESSAGES = {
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text (put it in quotes)",
    "path_type": "expected a file path",
    "model_type": "expected a section of key: value settings",
    "model_attributes_type": "expected a section of key: value settings",
    "model_attributes_type": "expected a section of key: value settings",
    "dict_type": "expected a section of key: value settings",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "finite_number": "expected a finite number",
}

_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _number(value: Any) -> str:
    # Bounds on float fields come back as floats; "must be >= 0" reads better than 0.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(error: dict) -> str:
    """Plain-language message for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _show(error.get("input"))
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {got}"
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        return f"must be {op} {_number(ctx.get(name))}, got {got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got}"
    if kind == "too_long":
        return f"expected {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {got}"


def _format_error(error: dict, reader: YamlReader) -> tuple[int, str] | None:
    """One ``(line, "FILE:LINE: key.path: message")`` entry, or None to skip."""
    tagged = tuple(error["loc"])
    loc = _walk(tagged)[0]
    kind = error["type"]
    if kind == "extra_forbidden":
        # Unknown keys are reported even when their value was unreadable.
        line, message = reader.line_for(loc), _unknown_key(tagged)
    elif kind == "union_tag_invalid":
        # A tag no variant answers to, such as source.kind: webcam; reported on the tag's own key.
        key = str(error["ctx"]["discriminator"]).strip("'")
        tag = error["input"].get(key) if isinstance(error["input"], dict) else None
        if tag is _INVALID:
            return None
        loc = (*loc, key)
        line, message = reader.line_for(loc), f"must be one of {error['ctx']['expected_tags']}, got {_show(tag)}"
    elif error.get("input") is _INVALID:
        return None  # already reported while reading the YAML
    elif kind == "missing" and loc and isinstance(loc[-1], int):
        # A fixed-length list such as roi came up short: report it on the list.
        loc = loc[:-1]
        count = len(error["input"]) if isinstance(error["input"], (list, tuple)) else "?"
        line, message = reader.line_for(loc), f"expected 4 numbers [x, y, w, h], got {count}"
    elif loc == ("mqtt", "password_env"):
        # Whoever fills this in wrong has often typed the password itself: never echo it.
        line = reader.line_for(loc)
        message = "must be the NAME of an environment variable (letters, digits, '_'), not the password itself"
    else:
        line, message = reader.line_for(loc), _describe(error)
    prefix = f"{_path_str(loc)}: " if loc else ""
    return line, f"{reader.filename}:{line}: {prefix}{message}"


def error_paths(exc: ValidationError) -> list[tuple[tuple, bool]]:
    """Each error's key path as the file spells it, and whether the key is absent (a required key)."""
    return [(_walk(tuple(error["loc"]))[0], error["type"] == "missing") for error in exc.errors()]


def format_errors(exc: ValidationError, reader: YamlReader) -> list[tuple[int, str]]:
    entries = (_format_error(error, reader) for error in exc.errors())
    # dict.fromkeys: a short list yields one "missing" error per absent item; keep one.
    return list(dict.fromkeys(entry for entry in entries if entry is not None))


