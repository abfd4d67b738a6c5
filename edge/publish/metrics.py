"""Prometheus metrics of a running station: the figures of the <base>/stats payload, as counters, gauges and a
latency histogram whose names start with `lineguard_`.

Every scrape reads the same numbers the stats payload is built from (edge.publish.messages.stats_payload), so
/metrics and MQTT never disagree. A web server mounts :meth:`StationMetrics.asgi_app` or calls
:meth:`StationMetrics.render`: the station page at /metrics, and with `metrics.enabled` a server of their own on
`metrics.host:metrics.port` with the page's limits on slow clients (edge.web.station).
prometheus_client is part of the `edge` extra and imported only when metrics are wanted.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from edge.errors import StartupError
from edge.status import LATENCY_BUCKETS_MS, StationStatus

if TYPE_CHECKING:
    from edge.config.integrations import MetricsConfig
    from edge.publish.mqtt import MqttLink

logger = logging.getLogger("lineguard")

PREFIX = "lineguard"
MS_PER_S = 1000.0
# stats key -> (metric name without prefix and _total, help); plain counters taken as they are.
COUNTERS = {
    "frames": ("frames", "Frames inspected (every verdict, whatever it was)."),
    "alerts": ("alerts", "Alerts raised (failed parts after the debounce)."),
    "errors": ("inspection_errors", "Frames that could not be inspected."),
    "dropped": ("dropped_frames", "Live frames replaced by newer ones before they were inspected."),
    "delivered": ("delivered_messages", "Outbox messages the broker acknowledged."),
    "reloads": ("reloads", "Reloads applied (SIGHUP or cmd/reload)."),
    "reload_failures": ("reload_failures", "Reloads refused; the running config and model stayed."),
}
OUTBOX_COUNTERS = {
    "dropped": ("outbox_dropped", "Messages dropped because the outbox was full."),
    "errors": ("outbox_write_errors", "Writes to the outbox that failed."),
    "published_directly": ("outbox_published_directly", "Verdicts sent without durability while the outbox "
                           "could not be written."),
    "lost": ("outbox_lost", "Messages that could neither be stored nor sent."),
    "discarded": ("outbox_discarded", "Queued messages that could never be published."),
}
SOURCE_COUNTERS = {
    "reconnects": ("source_reconnects", "Times the live source was reopened."),
    "unreadable": ("source_unreadable", "Replay files that could not be read."),
}
GAUGES = {
    "fps": ("fps", "Frames inspected per second since start."),
    "uptime_s": ("uptime_seconds", "Seconds since the daemon started."),
    "threshold": ("threshold", "Score threshold in force."),
    "last_seq": ("last_seq", "Seq of the last verdict."),
    "cpu_temp_c": ("cpu_temperature_celsius", "CPU temperature."),
}
SHADOW_COUNTERS = {
    "agreements": ("shadow_agreements", "Frames on which the shadow model's verdict equalled the live one's."),
    "disagreements": ("shadow_disagreements", "Frames on which the shadow model's verdict differed."),
    "skipped": ("shadow_skipped", "Frames the shadow model skipped while behind."),
}
VERDICTS = {"pass": "pass", "fail": "fail", "unscorable": "unscorable"}  # stats key -> result label


class StationCollector:
    """A prometheus_client collector over a stats snapshot taken at scrape time."""

    def __init__(self, stats: Callable[[], dict], status, connects: Callable[[], int]) -> None:
        self._stats = stats
        self._status = status  # edge.status.StationStatus, for the latency histogram
        self._connects = connects

    def describe(self) -> list:
        return []  # built per scrape: nothing to check at registration

    def collect(self) -> Iterator:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)
        stats = self._stats()
        yield from _counters(CounterMetricFamily, COUNTERS, stats)
        yield from _counters(CounterMetricFamily, OUTBOX_COUNTERS, stats.get("outbox", {}))
        yield from _counters(CounterMetricFamily, SOURCE_COUNTERS, stats.get("source", {}))
        verdicts = CounterMetricFamily(f"{PREFIX}_verdicts", "Verdicts by result.", labels=["result"])
        for key, label in VERDICTS.items():
            verdicts.add_metric([label], stats[key])
        yield verdicts
        yield from _sink_counters(CounterMetricFamily, stats.get("sinks", {}))
        yield CounterMetricFamily(f"{PREFIX}_mqtt_connects", "Connections made to the broker (the first and "
                                  "every reconnect).", value=self._connects())
        for key, (name, help_text) in GAUGES.items():
            if stats.get(key) is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=stats[key])
        yield GaugeMetricFamily(f"{PREFIX}_outbox_depth", "Messages waiting in the outbox.",
                                value=stats["outbox"]["depth"])
        yield GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while connected to the broker.",
                                value=int(stats["mqtt_connected"]))
        yield from _evidence(GaugeMetricFamily, CounterMetricFamily, stats.get("evidence", {}))
        yield from _drift(GaugeMetricFamily, CounterMetricFamily, stats.get("drift"))
        yield from _counters(CounterMetricFamily, SHADOW_COUNTERS, stats.get("shadow") or {})
        yield from _components(GaugeMetricFamily, stats.get("components") or {})
        triggers = CounterMetricFamily(f"{PREFIX}_triggers", "Triggers from every interface by outcome (stats "
                                       "triggers; received counts them all).", labels=["outcome"])
        for outcome, count in sorted((stats.get("triggers") or {}).items()):
            triggers.add_metric([outcome], count)
        yield triggers
        recent = GaugeMetricFamily(f"{PREFIX}_latency_recent_seconds", "Latency percentiles over the last "
                                   "verdicts (the stats payload's window).", labels=["quantile"])
        for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
            if stats["latency_ms"][key] is not None:
                recent.add_metric([quantile], stats["latency_ms"][key] / MS_PER_S)
        yield recent
        yield self._latency_histogram(HistogramMetricFamily)
        source = stats.get("source", {}).get("state")
        info = InfoMetricFamily(f"{PREFIX}_station", "The station, its model and its source's state.")
        info.add_metric([], {"device_id": stats["device_id"], "model": stats["model"]["name"],
                             "model_sha256": stats["model"]["sha256"], "source_state": source or "none"})
        yield info

    def _latency_histogram(self, family):
        status = self._status
        counts, total_ms = list(status.latency_buckets), status.latency_sum_ms
        cumulative, buckets = 0, []
        for bound_ms, count in zip((*LATENCY_BUCKETS_MS, float("inf")), counts):
            cumulative += count
            buckets.append(("+Inf" if bound_ms == float("inf") else repr(bound_ms / MS_PER_S), cumulative))
        return family(f"{PREFIX}_latency_seconds", "From frame arrival to verdict, every verdict since start.",
                      buckets=buckets, sum_value=total_ms / MS_PER_S)


def _counters(family, table: dict, values: dict) -> Iterator:
    for key, (name, help_text) in table.items():
        if values.get(key) is not None:
            yield family(f"{PREFIX}_{name}", help_text, value=values[key])


def _sink_counters(family, sinks: dict) -> Iterator:
    dropped = family(f"{PREFIX}_sink_dropped_events", "Verdict events a sink dropped while behind.", labels=["sink"])
    errors = family(f"{PREFIX}_sink_errors", "Verdict events a sink failed on.", labels=["sink"])
    for name, counts in sinks.items():
        dropped.add_metric([name], counts["dropped"])
        errors.add_metric([name], counts["errors"])
    yield from (dropped, errors)


def _evidence(gauge, counter, evidence: dict) -> Iterator:
    if not evidence:
        return
    yield counter(f"{PREFIX}_evidence_saved", "Evidence images saved.", value=evidence["saved"])
    yield counter(f"{PREFIX}_evidence_errors", "Evidence images that could not be saved.", value=evidence["errors"])
    yield counter(f"{PREFIX}_evidence_skipped_low_space", "Evidence saves left out for low disk space.",
                  value=evidence["skipped_low_space"])
    yield gauge(f"{PREFIX}_evidence_bytes", "Disk space the evidence images take.", value=evidence["bytes"])
    yield gauge(f"{PREFIX}_evidence_low_space", "1 while evidence is paused for low disk space.",
                value=int(evidence["low_space"]))


def _components(gauge, parts: dict) -> Iterator:
    """1 while a part works, 0 while not (stats components.<part>.last_error says why); a part switched off
    (the broker with mqtt.enabled false) is left out."""
    up = gauge(f"{PREFIX}_component_up", "1 while the part works (source, broker, outbox, model); stats "
               "components and /healthz say why not.", labels=["component"])
    for name, part in parts.items():
        if part["up"] is not None:
            up.add_metric([name], int(part["up"]))
    yield up


def _drift(gauge, counter, drift: dict | None) -> Iterator:
    """The drift watch (edge.drift): 0/1, its trips, and each signal's CUSUM against its limit."""
    if not drift:
        return
    yield gauge(f"{PREFIX}_drift", "1 while the drift watch has tripped (stats drift.reason says why).",
                value=int(drift["drift"]))
    if "trips" in drift:
        yield counter(f"{PREFIX}_drift_trips", "Times the drift watch tripped for the running model.",
                      value=drift["trips"])
        statistic = gauge(f"{PREFIX}_drift_statistic", "Each drift signal's CUSUM, in standard deviations; it "
                          f"trips above {PREFIX}_drift_limit.", labels=["signal"])
        for name, signal in drift["signals"].items():
            statistic.add_metric([name], signal["statistic"])
        yield statistic
        yield gauge(f"{PREFIX}_drift_limit", "The drift watch's CUSUM decision limit (drift.limit).",
                    value=drift["limit"])


class StationMetrics:
    """The station's metrics registry and the hooks a web server mounts."""

    def __init__(self, stats: Callable[[], dict], status) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector
        self.connects = 0
        self.registry = CollectorRegistry()
        self.registry.register(StationCollector(stats, status, lambda: self.connects))
        ProcessCollector(namespace=PREFIX, registry=self.registry)  # lineguard_process_cpu_seconds_total, ...

    def on_connection(self, connected: bool, reason: str) -> None:
        """An MqttLink connection listener: counts connections."""
        self.connects += connected

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for an HTTP request's Accept header: (body, content type)."""
        from prometheus_client.exposition import choose_encoder
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def asgi_app(self):
        """An ASGI app answering GET with the exposition, to mount at /metrics on another server."""
        from prometheus_client import make_asgi_app
        return make_asgi_app(self.registry)


def station_metrics(settings: MetricsConfig, page_enabled: bool, stats: Callable[[], dict],
                    status: StationStatus, link: MqttLink | None) -> StationMetrics | None:
    """A station's metrics: ``stats`` the <base>/stats payload as of now, ``status`` its StationStatus (for the
    latency histogram), ``link`` its broker link, whose connections are counted. For GET /metrics on the station
    page (``page_enabled``) and, when `metrics.enabled`, on metrics.port. None when neither wants them.
    StartupError (exit 78) when metrics.enabled and prometheus_client is missing.
    Call before the MQTT link starts, so every connection is counted."""
    if not (settings.enabled or page_enabled):
        return None
    try:
        metrics = StationMetrics(stats, status)
    except ImportError:
        if not settings.enabled:
            return None  # the page then serves no /metrics: nobody asked for them by name
        raise StartupError("metrics.enabled needs prometheus_client: install the 'edge' extra") from None
    if link is not None:
        link.add_connection_listener(metrics.on_connection)
    return metrics
