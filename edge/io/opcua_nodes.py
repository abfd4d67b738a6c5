"""The OPC UA node map of a station (README.md, "OPC UA"): one Station object in the lineguard namespace.

Every node id is a string id in NAMESPACE_URI: ``ns=<index of NAMESPACE_URI>;s=Station.<name>``. The values
are plain Python here; edge.io.opcua writes them into the address space.
"""
from __future__ import annotations

from datetime import datetime, timezone

from asyncua import ua

NAMESPACE_URI = "urn:lineguard:opcua"
STATION = "Station"
NO_TIME = datetime(1601, 1, 1, tzinfo=timezone.utc)  # OPC UA's zero DateTime: no verdict yet

_T = ua.VariantType
# name: (type, value before the first verdict, description). Reasons is a String array.
VARIABLES: dict[str, tuple[ua.VariantType, object, str]] = {
    # the last verdict: the same values as its MQTT <base>/result
    "Seq": (_T.UInt32, 0, "seq of the last verdict (the seq of its MQTT result); 0 = none yet"),
    "Verdict": (_T.String, "", "last verdict: pass, fail or unscorable; empty before the first"),
    "Score": (_T.Double, 0.0, "anomaly score of the last verdict"),
    "ScoreNorm": (_T.Double, 0.0, "last score normalised: 0.5 = at the threshold"),
    "Threshold": (_T.Double, 0.0, "threshold the last verdict was judged against"),
    "PartId": (_T.String, "", "part id of the last verdict (given with its trigger); empty = none"),
    "Timestamp": (_T.DateTime, NO_TIME, "UTC time of the last verdict (its result's ts)"),
    "Reasons": (_T.String, [], "why the last verdict is unscorable; empty otherwise (String array)"),
    # counters since start
    "PassCount": (_T.UInt32, 0, "pass verdicts since start"),
    "FailCount": (_T.UInt32, 0, "fail verdicts since start"),
    "UnscorableCount": (_T.UInt32, 0, "unscorable verdicts since start"),
    "BusyCount": (_T.UInt32, 0, "triggers answered busy since start, from any interface"),
    "AnsweredCount": (_T.UInt32, 0, "triggers answered since start (any answer, any interface)"),
    "LastAnswer": (_T.String, "", "answer to the last trigger: inspected, busy, no_frame or not_inspected"),
    "LastAnswerSeq": (_T.UInt32, 0, "seq the last trigger was inspected as; 0 when it was not"),
    # the station
    "State": (_T.String, "starting", "the source: starting, running, reconnecting, ended or stopped"),
    "StateReason": (_T.String, "", "what the source last said about its state"),
    "Ready": (_T.Boolean, False, "true while the station is inspecting (started, source not away)"),
    "Busy": (_T.Boolean, False, "true from an accepted trigger until its answer"),
    "CurrentThreshold": (_T.Double, 0.0, "the threshold in force now (SetThreshold changes it)"),
    "Model": (_T.String, "", "name of the running model bundle"),
    "LastCallReason": (_T.String, "", "what the last Trigger or SetThreshold call was answered, refusals too"),
}
UINT32_MAX = 0xFFFFFFFF

# Methods: (name, type, description) of the input and output arguments.
TRIGGER_IN = [("PartId", _T.String, "part id for the verdict; empty = none")]
TRIGGER_OUT = [
    ("Seq", _T.UInt32, "seq of the verdict (its MQTT result's); 0 when not inspected"),
    ("Verdict", _T.String, "pass, fail or unscorable; empty when not inspected"),
    ("Score", _T.Double, "anomaly score; 0 when not inspected"),
    ("Answer", _T.String, "inspected, busy, no_frame or not_inspected"),
    ("Reason", _T.String, "the answer in words"),
]
SET_THRESHOLD_IN = [("Value", _T.Double, "new threshold, within the model's allowed range")]
SET_THRESHOLD_OUT = [("Threshold", _T.Double, "the threshold now in force")]


def node_id(name: str, index: int) -> ua.NodeId:
    return ua.NodeId(f"{STATION}.{name}" if name != STATION else STATION, index)


def arguments(spec: list[tuple[str, ua.VariantType, str]]) -> list[ua.Argument]:
    return [ua.Argument(Name=name, DataType=ua.NodeId(kind.value), ValueRank=-1, ArrayDimensions=[],
                        Description=ua.LocalizedText(text)) for name, kind, text in spec]


def variant(name: str, value: object) -> ua.Variant:
    kind = VARIABLES[name][0]
    if kind == _T.UInt32:
        value = min(max(int(value), 0), UINT32_MAX)
    return ua.Variant(value, kind)


def verdict_values(seq: int, message: dict, result, counters) -> dict[str, object]:
    """The last-verdict and counter variables for one verdict (``message``: its MQTT result as built)."""
    return {
        "Seq": seq, "Verdict": result.verdict, "Score": float(result.score), "ScoreNorm": float(result.score_norm),
        "Threshold": float(result.threshold), "PartId": message.get("part_id") or "",
        "Timestamp": parse_ts(message.get("ts")), "Reasons": [result.reason] if result.reason else [],
        "PassCount": counters.passed, "FailCount": counters.failed, "UnscorableCount": counters.unscorable,
    }


def parse_ts(text: str | None) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return datetime.now(timezone.utc)
