"""A Sparkplug B host application for the tests, on a decoder of its own.

The station encodes with the protobuf module generated from Eclipse Tahu's sparkplug_b.proto; this reads the
protobuf wire format by hand, field numbers and types as that schema gives them, without the protobuf package. So
a payload passes only if it is what the schema says on the wire, not merely what one library reads back.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "spBv1.0"
# Tahu DataType numbers
INT64, UINT64, DOUBLE, BOOLEAN, STRING = 4, 8, 10, 11, 12
VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of every field, in order."""
    found, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire == I64:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == I32:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == LEN:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire} not used by the Sparkplug schema")
        if pos > len(data):
            raise ValueError("truncated field")
        found.append((number, wire, value))
    return found


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_historical: bool = False
    is_null: bool = False
    value: Any = None
    value_field: int | None = None  # which of the value oneof's fields held it


@dataclass
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)


# Metric fields: number -> (wire type, attribute); values 10..16
_METRIC_SCALARS = {1: (LEN, "name"), 2: (VARINT, "alias"), 3: (VARINT, "timestamp"), 4: (VARINT, "datatype"),
                   5: (VARINT, "is_historical"), 7: (VARINT, "is_null")}
_VALUE_WIRE = {10: VARINT, 11: VARINT, 12: I32, 13: I64, 14: VARINT, 15: LEN, 16: LEN}


def _metric(data: bytes) -> Metric:
    metric = Metric()
    for number, wire, raw in _fields(data):
        if number in _METRIC_SCALARS:
            expected, attribute = _METRIC_SCALARS[number]
            assert wire == expected, f"metric field {number} has wire type {wire}"
            value = raw.decode("utf-8") if attribute == "name" else raw
            if attribute in ("is_historical", "is_null"):
                value = bool(raw)
            setattr(metric, attribute, value)
        elif number in _VALUE_WIRE:
            assert wire == _VALUE_WIRE[number], f"metric value field {number} has wire type {wire}"
            metric.value_field = number
            metric.value = {12: lambda r: struct.unpack("<f", r)[0], 13: lambda r: struct.unpack("<d", r)[0],
                            14: bool, 15: lambda r: r.decode("utf-8")}.get(number, lambda r: r)(raw)
    return metric


def decode(data: bytes) -> Payload:
    payload = Payload()
    for number, wire, raw in _fields(data):
        if number == 1:
            payload.timestamp = raw
        elif number == 2:
            assert wire == LEN
            payload.metrics.append(_metric(raw))
        elif number == 3:
            assert wire == VARINT
            payload.seq = raw
    return payload


# The value field each datatype must use, per the schema's comments and Tahu's encoders.
VALUE_FIELD_OF = {INT64: 11, UINT64: 11, DOUBLE: 13, BOOLEAN: 14, STRING: 15}


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _put(number: int, wire: int, value: bytes | int) -> bytes:
    key = _put_varint(number << 3 | wire)
    if wire == VARINT:
        return key + _put_varint(value)
    return key + _put_varint(len(value)) + value


def rebirth_command(timestamp: int, by_alias: int | None = None) -> bytes:
    """An NCMD as a host sends it: Node Control/Rebirth = true (by name, or by alias alone)."""
    metric = (_put(2, VARINT, by_alias) if by_alias is not None else _put(1, LEN, b"Node Control/Rebirth"))
    metric += _put(4, VARINT, BOOLEAN) + _put(14, VARINT, 1)
    return _put(1, VARINT, timestamp) + _put(2, LEN, metric)


@dataclass
class Message:
    """One Sparkplug message as received."""

    index: int  # arrival order among all messages
    kind: str  # NBIRTH, DDATA ...
    group: str
    node: str
    device: str | None
    payload: Payload
    retain: bool


def parse(index: int, topic: str, data: bytes, retain: bool) -> Message | None:
    parts = topic.split("/")
    if parts[0] != NAMESPACE or len(parts) < 4 or parts[1] == "STATE":
        return None
    device = parts[4] if len(parts) == 5 else None
    return Message(index, parts[2], parts[1], parts[3], device, decode(data), retain)


def value_by_name(metrics: list[Metric], name: str) -> Any:
    found = [m for m in metrics if m.name == name]
    assert len(found) == 1, f"{name}: {len(found)} metrics"
    return None if found[0].is_null else found[0].value
