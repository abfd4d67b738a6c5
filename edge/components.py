"""The station's four parts, each with a state and its last error in plain words: the source, the broker link,
the outbox and the model.

One dict, `components` in the <base>/stats payload, feeds the station page's header, GET /healthz and the
`lineguard_component_up` metric, so the three never disagree. ``up`` is true, false or null (a part that is
switched off, such as the broker with mqtt.enabled false); ``last_error`` stays after the part recovers, so the
last thing that went wrong can still be read.
"""
from __future__ import annotations

COMPONENTS = ("source", "broker", "outbox", "model")
SOURCE_UP = ("running", "ended")  # a finite replay that ended normally is not a fault
BLOCKING = ("source", "model")  # without these the station does not inspect: /healthz answers 503


def component(up: bool | None, state: str, last_error: str | None) -> dict:
    return {"up": up, "state": state, "last_error": last_error}


def source_component(source: dict) -> dict:
    state = source.get("state") or "starting"
    return component(state in SOURCE_UP, state, source.get("last_error"))


def broker_component(link, enabled: bool, refusal: str | None = None) -> dict:
    """``link``: edge.publish.mqtt.MqttLink, or None before start-up or without a broker; ``refusal``: why a
    connected broker counts as refusing the outbox's messages (OutboxSender.refusal), or None."""
    if not enabled:
        return component(None, "off", None)
    if link is None:
        return component(False, "starting", None)
    error = link.last_error
    if link.connected and refusal:
        return component(False, "refusing", refusal)
    if link.connected:
        return component(True, "connected", error)
    return component(False, "refused" if error and "refused" in error else "disconnected", error)


def outbox_component(outbox: dict, broker_up: bool | None) -> dict:
    """``outbox``: VerdictRecorder.stats(). It holds verdicts while the broker is away: that is its job, so it
    stays up; only a failed write takes it down (and stops the station, exit 75)."""
    depth = outbox.get("depth", 0)
    state = "holding" if depth and broker_up is False else "ok"
    return component(not outbox.get("last_error"), state, outbox.get("last_error"))


def model_component(bundle_name: str | None, last_reload_error: str | None) -> dict:
    if bundle_name is None:
        return component(False, "not loaded", "model not loaded")
    error = f"reload refused: {last_reload_error}" if last_reload_error else None
    return component(True, "loaded", error)


def components(source: dict, link, mqtt_enabled: bool, outbox: dict, bundle_name: str | None,
               last_reload_error: str | None, refusal: str | None = None) -> dict:
    broker = broker_component(link, mqtt_enabled, refusal)
    return {"source": source_component(source), "broker": broker, "outbox": outbox_component(outbox, broker["up"]),
            "model": model_component(bundle_name, last_reload_error)}


def reasons(parts: dict) -> list[str]:
    """One line per part that is down: "source: cannot open camera /dev/video7: no such device"."""
    lines = [(name, part["last_error"] or part["state"]) for name, part in parts.items() if part["up"] is False]
    return [text if text.startswith(name) else f"{name}: {text}" for name, text in lines]


def inspecting(parts: dict) -> bool:
    """Whether the station inspects: its source and model are up (a broker outage only fills the outbox)."""
    return all(parts[name]["up"] is not False for name in BLOCKING if name in parts)
