"""The drift watch: its stated false-alarm rate, quiet on 10,000 real unchanged frames, and a real lighting change
that trips a real daemon (alert over a real broker, stats, /metrics) within the stated number of frames."""
from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.request
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edge.config.watch import DriftConfig
from edge.core.bundle import load_bundle
from edge.core.inspector import Inspector
from edge.core.preprocess import read_image, scale, to_pixels
from edge.core.quality import measure
from edge.core.reference import DriftReference, image_reference
from edge.drift import DriftWatch, in_control_arl, reference_of
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, write_config
from tests.support.helpers import MNIST_BUNDLE, MNIST_SMALL, ROOT, SAMPLES

SCHEMA = json.loads((ROOT / "docs" / "mqtt-payloads.schema.json").read_text())
SIGNALS = 7  # one-sided CUSUMs: score up; brightness, contrast and sharpness both ways
STATED_ARL0 = 200_000  # README "Drift watch": the whole watch, frames between false alarms
STATED_SHIFT1_FRAMES = 26  # a 1 SD shift trips in this many frames on average (a 2 SD one in 10)


def simulated_run_lengths(limit: float, allowance: float, runs: int, seed: int = 0) -> np.ndarray:
    """Run lengths of CUSUMs of clipped standard normal scores, simulated side by side."""
    rng = np.random.default_rng(seed)
    s, lengths, t = np.zeros(runs), np.zeros(runs), 0
    alive = np.ones(runs, bool)
    while alive.any():
        t += 1
        z = np.clip(rng.standard_normal(runs), -2.5758, 2.5758)
        s = np.where(alive, np.maximum(0.0, s + z - allowance), s)
        tripped = alive & (s > limit)
        lengths[tripped], alive = t, alive & ~tripped
    return lengths


def test_the_stated_false_alarm_rate_holds_and_the_markov_chain_agrees_with_simulation():
    defaults = DriftConfig()
    per_signal = in_control_arl(defaults.limit, defaults.allowance)
    assert per_signal > 1.5e6
    assert per_signal / SIGNALS > STATED_ARL0  # any of seven trips: at least ARL0 / 7 (the union bound)
    assert in_control_arl(defaults.limit, defaults.allowance, shift=1.0) <= STATED_SHIFT1_FRAMES
    assert in_control_arl(defaults.limit, defaults.allowance, shift=2.0) <= 10
    # The chain against a simulation, where one is affordable: a low limit, 4000 runs (standard error ~1.6 %).
    simulated = simulated_run_lengths(3.0, 0.5, 4000).mean()
    assert simulated == pytest.approx(in_control_arl(3.0, 0.5), rel=0.06)


def sample_frames() -> list[tuple[str, float, float, dict]]:
    """The sample frames in their order, judged by the real model: (verdict, score, threshold, image figures)."""
    inspector = Inspector(MNIST_BUNDLE)
    judged = []
    for path in sorted(SAMPLES.glob("*.png")):
        image = read_image(path, "gray")
        result = inspector.inspect(image)
        judged.append((result.verdict, result.score, result.threshold, measure(scale(to_pixels(image, inspector.spec)))))
    return judged


def training_reference(bundle) -> DriftReference:
    """What the trainer writes into a new bundle: the calibration's good scores (here the shipped bundle's report)
    and the figures of good training images (the digit 1s the test fixture holds)."""
    data = np.load(MNIST_SMALL)
    goods = data["x_train"][data["y_train"] == 1]
    figures = [measure(scale(to_pixels(image, bundle.preprocess))) for image in goods]
    return DriftReference(reference_of(bundle).scores, image_reference(figures, "training images"))


def test_ten_thousand_unchanged_frames_raise_no_drift():
    bundle = load_bundle(MNIST_BUNDLE)
    frames = sample_frames()
    # With the reference a new bundle carries, and with an older bundle's (image figures learned at the station).
    for reference in (training_reference(bundle), reference_of(bundle)):
        watch = DriftWatch(reference, DriftConfig())
        tripped = [n for n in range(10_000) if watch.add(*frames[n % len(frames)])]
        report = watch.report()
        assert tripped == [] and report["drift"] is False and report["reason"] is None, report
        assert report["signals"]["score"]["reference"] == "good images of the bundle's report"
        assert all(signal["frames"] >= 6000 for signal in report["signals"].values())


def test_a_score_shift_trips_and_says_by_how_much():
    frames = sample_frames()
    watch = DriftWatch(reference_of(load_bundle(MNIST_BUNDLE)), DriftConfig())
    for n in range(200):
        assert not watch.add(*frames[n % len(frames)])
    worse = [(verdict, score * 1.8, threshold * 10, figures) for verdict, score, threshold, figures in frames]
    trips = [n for n in range(60) if watch.add(*worse[n % len(worse)])]
    assert len(trips) == 1 and trips[0] < 20
    assert watch.report()["reason"].startswith("scores of passed parts up ")


RAMP_START, RAMP_FRAMES, DARKEST, FRAMES = 300, 20, 0.4, 420


def darkening_replay(folder: Path) -> None:
    """The sample frames cycled in their order, as real files; from RAMP_START the light dims over RAMP_FRAMES
    frames to DARKEST of its level and stays there."""
    folder.mkdir()
    samples = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted(SAMPLES.glob("*.png"))]
    for n in range(FRAMES):
        level = 1.0 - (1.0 - DARKEST) * min(1.0, max(0, n - RAMP_START + 1) / RAMP_FRAMES)
        image = cv2.convertScaleAbs(samples[n % len(samples)], alpha=level)
        cv2.imwrite(str(folder / f"{n:05d}.png"), image)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_a_lighting_change_trips_the_daemon_within_the_stated_frames(tmp_path, broker, make_collector):
    darkening_replay(tmp_path / "frames")
    port, page_port = free_port(), free_port()
    config = write_config(tmp_path, broker.port, tmp_path / "frames", metrics={"enabled": True, "port": port},
                          web={"enabled": True, "port": page_port, "keep_serving_after_replay": True},
                          mqtt={"stats_interval_s": 0.3})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait_for_log("replay finished", 120), daemon.log()[-3000:]
        drift_alerts = lambda: [a for a in collector.json_payloads(f"{BASE}/alert") if a.get("kind") == "drift"]  # noqa: E731
        assert collector.wait_for(lambda _: drift_alerts(), 10), daemon.log()[-3000:]
        [alert] = drift_alerts()
        jsonschema.validate(alert, {**SCHEMA, "$ref": "#/$defs/alert"})
        # seq n + 1 is frame n. Up to the ramp nothing; then within the ramp and the stated frames after it
        # (counting every frame, failed ones too: the watch sees the others).
        assert RAMP_START < alert["seq"] <= RAMP_START + RAMP_FRAMES + STATED_SHIFT1_FRAMES, alert
        assert re.fullmatch(r"(brightness|contrast|sharpness) down \d+ % over the last \d+", alert["reason"]), alert
        assert alert["model"]["name"] == "mnist-1"
        assert alert["signals"]["brightness"]["reference"] == "first 200 frames at this station"
        collector.clear()
        assert collector.wait_for(lambda m: any(x.topic == f"{BASE}/stats" for x in m), 10)
        stats = collector.json_payloads(f"{BASE}/stats")[-1]
        # By the replay's end every figure of the dimmed light has tripped: brightness down by about 1 - DARKEST.
        assert stats["drift"]["drift"] is True, stats["drift"]
        brightness = re.search(r"brightness down (\d+) %", stats["drift"]["reason"])
        assert brightness and abs(int(brightness[1]) - 100 * (1 - DARKEST)) <= 10, stats["drift"]["reason"]
        jsonschema.validate(stats, {**SCHEMA, "$ref": "#/$defs/stats"})
        with urllib.request.urlopen(f"http://127.0.0.1:{page_port}/api/stats", timeout=10) as response:
            assert json.loads(response.read())["drift"]["drift"] is True  # what the page's header line shows
        metrics = scrape(port)
        assert "\nlineguard_drift 1.0\n" in metrics
        assert 'lineguard_drift_statistic{signal="brightness"}' in metrics
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]


def test_an_older_bundle_without_report_takes_its_score_reference_from_the_calibration(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(MNIST_BUNDLE, folder, ignore=shutil.ignore_patterns("report"))
    bundle = load_bundle(folder)
    assert bundle.reference is None
    scores = reference_of(bundle).scores
    stats = bundle.calibration.stats
    assert scores.source == "log-normal from the calibration's good p50 and p99" and scores.n == stats["n_good"]
    assert scores.median == pytest.approx(stats["good_p50"], rel=1e-6)
    assert np.interp(0.99, np.linspace(0, 1, 101), scores.quantiles) == pytest.approx(stats["good_p99"], rel=1e-6)
