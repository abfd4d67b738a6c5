"""Prometheus metrics: scraped over HTTP from the real daemon process, parsed with Prometheus' own text parser,
and equal to the stats payload published over MQTT at the same moment; the exposition also mounts on Starlette."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from edge.core.bundle import load_bundle
from edge.publish import messages
from edge.publish.metrics import StationMetrics
from edge.status import StationStatus
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import MNIST_BUNDLE

TRIGGERS = 6  # the first six sample frames: five 1s and a 9


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.read().decode())


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, sorted labels), as Prometheus' parser reads it."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("lineguard_"), family.name
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def counters(scraped: dict) -> dict:
    """What must not move while the station is idle: everything but time, fps and the process's own figures."""
    moving = ("lineguard_uptime_seconds", "lineguard_fps", "lineguard_process_", "lineguard_cpu_temperature")
    return {key: value for key, value in scraped.items() if not key[0].startswith(moving)}


def test_metrics_over_http_equal_the_stats_payload(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=TRIGGERS)
    port, page_port = free_port(), free_port()
    config = write_config(tmp_path, broker.port, frames, trigger={"mode": "mqtt"}, mqtt={"stats_interval_s": 0.3},
                          metrics={"enabled": True, "port": port}, web={"enabled": True, "port": page_port})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    try:
        assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
        replies = lambda: collector.json_payloads(f"{BASE}/reply")  # noqa: E731
        for n in range(TRIGGERS):  # one at a time: a trigger while another is answered gets `busy`
            collector.publish(f"{BASE}/cmd/trigger", json.dumps({"part_id": f"P-{n}"}).encode())
            assert collector.wait_for(lambda _: len(replies()) > n, 30), daemon.log()[-2000:]
        good = config.read_text()
        config.write_text("source: [")  # a reload of a broken file is refused ...
        collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "bad"}')
        assert collector.wait_for(lambda _: any(r["request_id"] == "bad" for r in replies()), 30), daemon.log()[-3000:]
        config.write_text(good)  # ... and of the good one applied
        collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "good"}')
        assert collector.wait_for(lambda _: any(r["request_id"] == "good" for r in replies()), 30)
        assert sum(r["command"] == "trigger" and r["ok"] for r in replies()) == TRIGGERS
        assert collector.wait_for(lambda _: collector.json_payloads(f"{BASE}/stats")[-1]["delivered"] >= TRIGGERS, 10)

        before = scrape(port)
        collector.clear()
        assert collector.wait_for(lambda m: any(x.topic == f"{BASE}/stats" for x in m), 10)
        after = scrape(port)
        on_page = scrape(page_port)  # the station page serves the same registry at its own /metrics
        stats = collector.json_payloads(f"{BASE}/stats")[0]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]

    assert counters(on_page) == counters(after)
    assert counters(before) == counters(after)  # idle: the stats between the two scrapes are of the same moment
    value = lambda name, **labels: after[(name, tuple(sorted(labels.items())))]  # noqa: E731
    assert stats["frames"] == TRIGGERS and stats["fail"] >= 1 and stats["reload_failures"] == 1
    expected = {
        "lineguard_frames_total": stats["frames"], "lineguard_alerts_total": stats["alerts"],
        "lineguard_inspection_errors_total": stats["errors"], "lineguard_dropped_frames_total": stats["dropped"],
        "lineguard_delivered_messages_total": stats["delivered"], "lineguard_reloads_total": stats["reloads"],
        "lineguard_reload_failures_total": stats["reload_failures"],
        "lineguard_outbox_depth": stats["outbox"]["depth"], "lineguard_outbox_dropped_total": stats["outbox"]["dropped"],
        "lineguard_outbox_discarded_total": stats["outbox"]["discarded"],
        "lineguard_source_reconnects_total": stats["source"]["reconnects"],
        "lineguard_threshold": stats["threshold"], "lineguard_last_seq": stats["last_seq"],
        "lineguard_mqtt_connected": 1, "lineguard_mqtt_connects_total": 1,
        "lineguard_evidence_saved_total": stats["evidence"]["saved"],
        "lineguard_latency_seconds_count": stats["frames"],
    }
    assert {name: value(name) for name in expected} == expected
    assert stats["triggers"]["inspected"] == TRIGGERS
    assert {outcome: value("lineguard_triggers_total", outcome=outcome) for outcome in stats["triggers"]} == \
        stats["triggers"]
    assert {part: value("lineguard_component_up", component=part) for part in stats["components"]} == {
        "source": 1, "broker": 1, "outbox": 1, "model": 1}
    for result in ("pass", "fail", "unscorable"):
        assert value("lineguard_verdicts_total", result=result) == stats[result]
    for sink, counts in stats["sinks"].items():
        assert value("lineguard_sink_dropped_events_total", sink=sink) == counts["dropped"]
        assert value("lineguard_sink_errors_total", sink=sink) == counts["errors"]
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        assert value("lineguard_latency_recent_seconds", quantile=quantile) == stats["latency_ms"][key] / 1000
    assert value("lineguard_latency_seconds_bucket", le="+Inf") == stats["frames"]
    assert before[("lineguard_uptime_seconds", ())] <= stats["uptime_s"] + 0.1 <= after[("lineguard_uptime_seconds", ())] + 0.2
    info = [labels for (name, labels) in after if name == "lineguard_station_info"]
    assert dict(info[0])["model_sha256"] == stats["model"]["sha256"]


def test_a_busy_metrics_port_stops_the_start_with_exit_78(tmp_path):
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        config = write_config(tmp_path, None, sample_folder(tmp_path, 2), mqtt={"enabled": False},
                              metrics={"enabled": True, "port": port})
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 78
        assert f"metrics.port: cannot listen on 127.0.0.1:{port}" in daemon.log()
    finally:
        blocker.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes the connection (a socket timeout, 20 s, when it never does)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_silent_and_slow_scrapers_are_closed_and_cannot_crowd_out_prometheus(tmp_path):
    """metrics.port has the page's limits: more idle sockets than metrics.max_connections cost no more than that
    many descriptors, each is closed after metrics.read_timeout_s, and a real scrape is still answered."""
    port, limit = free_port(), 4
    config = write_config(tmp_path, None, sample_folder(tmp_path, 2), mqtt={"enabled": False},
                          source={"fps": 4, "loop": True},
                          metrics={"enabled": True, "port": port, "read_timeout_s": 1.0, "max_connections": limit})
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait_for_log("Prometheus metrics at", 30), daemon.log()[-3000:]
        fds = lambda: len(os.listdir(f"/proc/{daemon.process.pid}/fd"))  # noqa: E731
        fds_before = fds()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3 * limit)]
        idle[1].sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers that never end
        try:
            assert ("lineguard_frames_total", ()) in scrape(port)
            assert fds() <= fds_before + limit + 4
            assert all(closed_by_server(sock) for sock in idle)  # nothing whole was sent in time
        finally:
            for sock in idle:
                sock.close()
    finally:
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(30)
    assert code == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_the_exposition_mounts_on_a_starlette_server():
    status = StationStatus()
    for verdict, latency_ms in (("pass", 3.0), ("fail", 40.0), ("pass", 700.0)):
        status.count(verdict, latency_ms, alert=verdict == "fail")
    bundle = load_bundle(MNIST_BUNDLE)
    stats = lambda: messages.stats_payload(  # noqa: E731
        "cell-1", bundle, 20.0, status, source={}, outbox={"depth": 2, "dropped": 0}, last_seq=3, delivered=1,
        evidence={}, mqtt_connected=False, sinks={})
    metrics = StationMetrics(stats, status)
    async def get():
        transport = httpx.ASGITransport(app=Starlette(routes=[Mount("/metrics", app=metrics.asgi_app())]))
        async with httpx.AsyncClient(transport=transport, base_url="http://station", follow_redirects=True) as client:
            return await client.get("/metrics")

    response = asyncio.run(get())
    assert response.status_code == 200
    mounted = samples(response.text)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and counters(samples(body.decode())) == counters(mounted)
    assert mounted[("lineguard_verdicts_total", (("result", "pass"),))] == 2
    assert mounted[("lineguard_outbox_depth", ())] == 2
    buckets = {dict(labels)["le"]: v for (name, labels), v in mounted.items() if name == "lineguard_latency_seconds_bucket"}
    assert (buckets["0.0025"], buckets["0.005"], buckets["0.05"], buckets["1.0"], buckets["+Inf"]) == (0, 1, 2, 3, 3)
    assert abs(mounted[("lineguard_latency_seconds_sum", ())] - 0.743) < 1e-9
