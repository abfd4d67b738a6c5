"""Sparkplug B topics, metrics and payloads of the station's edge node, and the payload seq.

One node (``<group>/<edge_node>``) with one device (the camera). Metrics have fixed aliases: a birth gives each
metric's name, alias, datatype and current value; DDATA gives aliases only. The aliases are part of what is stored
in the outbox (a DDATA row is built when its verdict is recorded), so they never change between versions.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from edge.publish.outbox import HELD
from edge.publish.sparkplug import sparkplug_b_pb2 as pb

NAMESPACE = "spBv1.0"
SEQ_MODULUS = 256  # the payload seq runs 0..255 and wraps
BDSEQ_MODULUS = 256  # so does bdSeq
HELD_DDATA = f"{HELD}sparkplug/DDATA"  # the outbox topic of a DDATA row: held for the node's sender
BDSEQ = "bdSeq"


@dataclass(frozen=True)
class Topics:
    """The node's topics: ``spBv1.0/<group>/<type>/<edge_node>[/<device>]``."""

    group: str
    node: str
    device: str

    def of_node(self, message_type: str) -> str:
        return f"{NAMESPACE}/{self.group}/{message_type}/{self.node}"

    def of_device(self, message_type: str) -> str:
        return f"{self.of_node(message_type)}/{self.device}"


@dataclass(frozen=True)
class Metric:
    name: str
    alias: int
    datatype: int  # a Tahu DataType


_VALUE_FIELD = {pb.Int64: "long_value", pb.UInt64: "long_value", pb.Double: "double_value",
                pb.Boolean: "boolean_value", pb.String: "string_value"}

REBIRTH = Metric("Node Control/Rebirth", 1, pb.Boolean)
NODE_METRICS = (REBIRTH, Metric("Properties/Software Version", 2, pb.String), Metric("Properties/Station", 3, pb.String))
# The camera's metrics. A verdict's DDATA carries all but State, which goes alone when the source's state changes.
DEVICE_METRICS = (
    Metric("Seq", 10, pb.UInt64),  # the verdict's seq, as in <base>/result
    Metric("Id", 11, pb.String),  # the result message's id
    Metric("Verdict", 12, pb.String),  # pass, fail or unscorable
    Metric("Score", 13, pb.Double),
    Metric("Threshold", 14, pb.Double),
    Metric("PartId", 15, pb.String),  # null when the trigger named no part
    Metric("Image", 16, pb.String),
    Metric("Alert", 17, pb.Boolean),
    Metric("LatencyMs", 18, pb.Double),
    Metric("Model", 19, pb.String),
    Metric("Counters/Pass", 20, pb.UInt64),  # since the station started
    Metric("Counters/Fail", 21, pb.UInt64),
    Metric("Counters/Unscorable", 22, pb.UInt64),
    Metric("Counters/Alerts", 23, pb.UInt64),
    Metric("State", 24, pb.String),  # the source: starting, running, reconnecting, ended
)
STATE = DEVICE_METRICS[-1]
BY_NAME = {metric.name: metric for metric in (*NODE_METRICS, *DEVICE_METRICS)}


def now_ms() -> int:
    return int(time.time() * 1000)


class Sequence:
    """The payload seq of an edge node: NBIRTH takes 0, each later message of the node the next, 255 wraps to 0.

    Used by one thread. ``peek`` the seq a message gets, ``advance`` once it was handed to the link, so a message
    that never went out leaves no gap."""

    def __init__(self) -> None:
        self._next = 0

    def peek(self) -> int:
        return self._next

    def advance(self) -> None:
        self._next = (self._next + 1) % SEQ_MODULUS

    def restart(self) -> None:
        """An NBIRTH comes next: it takes 0."""
        self._next = 0


def _add(payload: pb.Payload, metric: Metric, value: Any, timestamp: int, birth: bool) -> None:
    """A metric: on a birth with name and datatype, else by alias alone; None is an explicit null."""
    item = payload.metrics.add()
    if birth:
        item.name = metric.name
        item.datatype = metric.datatype
    item.alias = metric.alias
    item.timestamp = timestamp
    if value is None:
        item.is_null = True
    else:
        setattr(item, _VALUE_FIELD[metric.datatype], value)


def node_death(bdseq: int) -> bytes:
    """NDEATH: the will, and what a clean stop publishes. Only bdSeq, no seq."""
    payload = pb.Payload(timestamp=now_ms())
    payload.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=bdseq)
    return payload.SerializeToString()


def node_birth(bdseq: int, seq: int, software: str, station: str) -> bytes:
    """NBIRTH: bdSeq (that of the connection's will), Node Control/Rebirth false and the node's properties."""
    timestamp = now_ms()
    payload = pb.Payload(timestamp=timestamp, seq=seq)
    payload.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=bdseq, timestamp=timestamp)
    for metric, value in zip(NODE_METRICS, (False, software, station)):
        _add(payload, metric, value, timestamp, birth=True)
    return payload.SerializeToString()


def device_birth(seq: int, values: Mapping[str, Any], stamped_ms: int | None, state: str) -> bytes:
    """DBIRTH: every metric of the camera with its current value (null before the first verdict)."""
    timestamp = now_ms()
    payload = pb.Payload(timestamp=timestamp, seq=seq)
    for metric in DEVICE_METRICS:
        value = state if metric is STATE else values.get(metric.name)
        _add(payload, metric, value, timestamp if metric is STATE or stamped_ms is None else stamped_ms, birth=True)
    return payload.SerializeToString()


def verdict_values(message: Mapping[str, Any], alert: bool, counters: Mapping[str, int]) -> dict[str, Any]:
    """A verdict's metric values by name, from its result message (edge.publish.messages.result_payload)."""
    score, threshold = message["score"], message["threshold"]
    return {
        "Seq": message["seq"], "Id": message["id"], "Verdict": message["verdict"],
        "Score": None if score is None else float(score), "Threshold": None if threshold is None else float(threshold),
        "PartId": message["part_id"], "Image": message["image"], "Alert": alert,
        "LatencyMs": float(message["latency_ms"]), "Model": message["model"]["name"],
        **{f"Counters/{name}": count for name, count in counters.items()},
    }


def verdict_data(values: Mapping[str, Any], timestamp: int) -> bytes:
    """A verdict's DDATA as stored in the outbox: without seq, which it gets when sent (:func:`data_to_send`)."""
    payload = pb.Payload(timestamp=timestamp)
    for name, value in values.items():
        _add(payload, BY_NAME[name], value, timestamp, birth=False)
    return payload.SerializeToString()


def state_data(seq: int, state: str) -> bytes:
    """DDATA with the source's new state."""
    timestamp = now_ms()
    payload = pb.Payload(timestamp=timestamp, seq=seq)
    _add(payload, STATE, state, timestamp, birth=False)
    return payload.SerializeToString()


def data_to_send(stored: bytes, seq: int, historical: bool) -> bytes:
    """A stored DDATA as it goes out: its seq, the time it is sent, and is_historical on its metrics when the births
    of this session already reported a newer verdict (it was waiting in the outbox). ValueError if unreadable."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(stored)
    except DecodeError as exc:
        raise ValueError(f"not a Sparkplug payload: {exc}") from None
    payload.seq = seq
    payload.timestamp = now_ms()
    if historical:
        for metric in payload.metrics:
            metric.is_historical = True
    return payload.SerializeToString()


def rebirth_requested(command: bytes) -> bool:
    """Whether an NCMD asks for a rebirth: Node Control/Rebirth (by name or alias) true. ValueError if unreadable."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(command)
    except DecodeError as exc:
        raise ValueError(f"not a Sparkplug payload: {exc}") from None
    return any((metric.name == REBIRTH.name or (not metric.name and metric.alias == REBIRTH.alias))
               and metric.WhichOneof("value") == "boolean_value" and metric.boolean_value
               for metric in payload.metrics)
