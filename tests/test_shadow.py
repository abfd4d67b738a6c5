"""The shadow model on a real daemon and broker: the same bundle agrees on every frame, a candidate with another
threshold disagrees on exactly the frames whose live score lies between the two, and a broken candidate is refused
with the reason while the live model goes on."""
from __future__ import annotations

import json
import shutil
import signal
import urllib.request
from dataclasses import replace
from pathlib import Path

import jsonschema
from prometheus_client.parser import text_string_to_metric_families

from edge.core.bundle import load_bundle, save_manifest
from edge.exitcodes import EX_DATAERR
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import MNIST_BUNDLE, ROOT, run_cli

SCHEMA = json.loads((ROOT / "docs" / "mqtt-payloads.schema.json").read_text())
FRAMES = 20
SHADOW_THRESHOLD = 7.0  # below the bundle's 21.69: between the two lie several good 1s of the sample frames


def bundle_with_threshold(folder: Path, threshold: float) -> Path:
    """A copy of the MNIST bundle whose calibration has another threshold, written by the bundle module."""
    shutil.copytree(MNIST_BUNDLE, folder)
    bundle = load_bundle(folder)
    bundle.calibration = replace(bundle.calibration, threshold=threshold)
    save_manifest(bundle)
    assert load_bundle(folder).calibration.threshold == threshold  # and its hashes still verify
    return folder


def replay_with_shadow(tmp_path, broker, make_collector, shadow_model: Path) -> tuple[list[dict], dict, list]:
    """A finite replay of the sample frames at 10 fps with a shadow model: live results, final stats, and
    every message the station published."""
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 10},
                          shadow={"model": str(shadow_model)})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    stopped = lambda m: any(x.topic == f"{BASE}/state" and json.loads(x.payload)["source"] == "stopped" for x in m)  # noqa: E731
    assert collector.wait_for(stopped, 10)  # the final stats go out just before the state `stopped`
    got = unique_in_order(results(collector))
    stats = collector.json_payloads(f"{BASE}/stats")[-1]
    jsonschema.validate(stats, {**SCHEMA, "$ref": "#/$defs/stats"})
    return got, stats, collector.messages


def test_the_same_bundle_as_shadow_agrees_on_every_frame_and_publishes_nothing(tmp_path, broker, make_collector):
    got, stats, published = replay_with_shadow(tmp_path, broker, make_collector, MNIST_BUNDLE)
    shadow = stats["shadow"]
    assert len(got) == FRAMES and shadow["error"] is None, shadow
    assert shadow["frames"] + shadow["skipped"] == FRAMES and shadow["frames"] > 0
    assert shadow["agreements"] == shadow["frames"] and shadow["disagreements"] == 0 and shadow["agreement"] == 1.0
    assert shadow["last_disagreements"] == []
    assert shadow["fail_rate"]["live"] == shadow["fail_rate"]["shadow"]
    assert shadow["model"]["sha256"] == stats["model"]["sha256"]
    # The shadow publishes no verdict: one result per frame, and alerts only for the live fails.
    assert len([m for m in published if m.topic == f"{BASE}/result"]) == FRAMES
    assert len([m for m in published if m.topic == f"{BASE}/alert"]) == sum(r["verdict"] == "fail" for r in got)


def test_a_shadow_with_another_threshold_disagrees_exactly_between_the_thresholds(tmp_path, broker, make_collector):
    candidate = bundle_with_threshold(tmp_path / "candidate", SHADOW_THRESHOLD)
    got, stats, _ = replay_with_shadow(tmp_path, broker, make_collector, candidate)
    shadow = stats["shadow"]
    assert shadow["frames"] + shadow["skipped"] == FRAMES, shadow
    live_threshold = got[0]["threshold"]
    between = [r["seq"] for r in got if SHADOW_THRESHOLD <= r["score"] < live_threshold]
    assert len(between) >= 3, got  # the test means something
    assert shadow["threshold"] == SHADOW_THRESHOLD
    # Disagreements only between the two thresholds; every compared frame there is one. A loaded machine may make
    # the shadow (at the lowest priority) skip a frame: those are counted, and the exact figures need none.
    assert set(shadow["last_disagreements"]) <= set(between), shadow
    assert len(between) - shadow["skipped"] <= shadow["disagreements"] <= len(between), shadow
    if shadow["skipped"]:
        return
    assert shadow["last_disagreements"] == between
    assert shadow["disagreements"] == len(between) and shadow["agreements"] == FRAMES - len(between)
    live_fails = sum(r["verdict"] == "fail" for r in got)
    assert shadow["fail_rate"]["live"]["rate"] == round(live_fails / FRAMES, 6)
    assert shadow["fail_rate"]["shadow"]["rate"] == round((live_fails + len(between)) / FRAMES, 6)
    for rate in shadow["fail_rate"].values():
        assert rate["low"] < rate["rate"] < rate["high"]


def test_a_broken_candidate_is_refused_with_its_reason_and_the_live_model_goes_on(tmp_path, broker, make_collector):
    broken = tmp_path / "broken"
    shutil.copytree(MNIST_BUNDLE, broken)
    model = broken / "model.tflite"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    page_port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 10, "loop": True},
                          web={"enabled": True, "port": page_port}, shadow={"model": str(broken)},
                          mqtt={"stats_interval_s": 0.3})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    try:
        # Configured at start: the station starts anyway, says why in stats, and inspects with the live model.
        stats = lambda: collector.json_payloads(f"{BASE}/stats")  # noqa: E731
        assert collector.wait_for(lambda _: stats() and stats()[-1]["frames"] >= 3, 30), daemon.log()[-3000:]
        assert stats()[-1]["shadow"]["model"] is None
        assert "model.tflite: sha256" in stats()[-1]["shadow"]["error"], stats()[-1]["shadow"]

        good = run_cli("shadow", "--config", config, MNIST_BUNDLE)
        assert good.returncode == 0 and "scores beside mnist-1" in good.stdout, good.stderr
        refused = run_cli("shadow", "--config", config, broken)
        assert refused.returncode == EX_DATAERR
        assert "shadow model refused" in refused.stderr and "does not match" in refused.stderr, refused.stderr
        assert "the live model mnist-1 goes on" in refused.stderr
        before = len(results(collector))
        assert collector.wait_for(lambda _: len(results(collector)) >= before + 5, 30)  # still inspecting
        latest = stats()[-1]["shadow"]
        assert latest["model"]["name"] == "mnist-1" and latest["frames"] > 0  # the earlier candidate stays
        with urllib.request.urlopen(f"http://127.0.0.1:{page_port}/metrics", timeout=10) as response:
            scraped = {(s.name, tuple(s.labels.items())): s.value
                       for f in text_string_to_metric_families(response.read().decode()) for s in f.samples}
        assert scraped[("lineguard_shadow_agreements_total", ())] >= latest["agreements"] > 0
        assert scraped[("lineguard_shadow_disagreements_total", ())] == 0
        assert ("lineguard_shadow_skipped_total", ()) in scraped
        collector.publish(f"{BASE}/cmd/shadow", b'{"stop": true, "request_id": "s"}')
        replies = lambda: [r for r in collector.json_payloads(f"{BASE}/reply") if r["request_id"] == "s"]  # noqa: E731
        assert collector.wait_for(lambda _: replies(), 15)
        assert replies()[0]["ok"] and replies()[0]["reason"] == "shadow mnist-1 stopped"
        assert collector.wait_for(lambda _: stats()[-1]["shadow"]["model"] is None, 10)
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]


def test_frames_skipped_while_the_candidate_loads_are_counted_on_it_once_it_is_there():
    """The frame loop does not wait for the shadow's model to load: frames beyond MAX_PENDING meanwhile are
    skipped, and counted, so frames + skipped is every frame the live model judged."""
    from types import SimpleNamespace

    from edge.shadow import MAX_PENDING, ShadowSink

    sink = ShadowSink(lambda: SimpleNamespace(shadow=SimpleNamespace(model=MNIST_BUNDLE)))
    assert [sink.wants(None) for _ in range(MAX_PENDING + 3)] == [True] * MAX_PENDING + [False] * 3
    sink.candidate = SimpleNamespace(skipped=0)  # loaded now (its two waiting frames are still being scored)
    assert sink.wants(None) is False and sink.candidate.skipped == 0  # the loader has not said it is done
    sink.configured = MNIST_BUNDLE
    assert sink.wants(None) is False and sink.candidate.skipped == 4 + 1
