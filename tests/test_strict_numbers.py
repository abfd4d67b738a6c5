"""Numbers that would make a station pass every part are refused wherever they come in, and everything the
project writes is strict JSON (no NaN or Infinity, which JavaScript's JSON.parse and Node-RED refuse)."""
from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.core.bundle import MANIFEST_NAME, load_bundle
from edge.core.files import write_json_atomic
from edge.core.scoring import Calibration, verdict
from edge.publish import messages
from tests.support.broker import NotStrictJSON, strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import MNIST_BUNDLE, SAMPLES, run_cli

EX_CONFIG = 78
WAIT_S = 30.0
# (field, value as written in model.json): each would pass parts it should fail, or fail every part.
BAD_CALIBRATIONS = [
    ("threshold", "NaN"), ("threshold", "Infinity"), ("threshold", "-Infinity"), ("threshold", "1e400"),
    ("threshold", "0"), ("threshold", "-21.7"), ("pixel_threshold", "NaN"), ("pixel_threshold", "0"),
    ("pixel_threshold", "-1"), ("score_min", "NaN"), ("score_max", "Infinity"), ("score_max", "-Infinity"),
]


def bad_bundle(tmp_path: Path, field: str, literal: str) -> Path:
    """A copy of the shipped bundle whose model.json carries ``literal`` (raw JSON text) as calibration.field."""
    bundle = Path(shutil.copytree(MNIST_BUNDLE, tmp_path / "bad-bundle", dirs_exist_ok=True))
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["calibration"][field] = "@VALUE@"
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2).replace('"@VALUE@"', literal))
    return bundle


def one_error_line(stderr: str, bundle: Path, field: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if f"calibration.{field}" in line]
    assert len(lines) == 1, stderr[-3000:]
    assert str(bundle / MANIFEST_NAME) in lines[0]
    return lines[0]


@pytest.mark.parametrize("field, literal", BAD_CALIBRATIONS)
def test_bundle_with_an_absurd_calibration_is_refused_naming_the_field(tmp_path, field, literal):
    bundle = bad_bundle(tmp_path, field, literal)
    with pytest.raises(ValueError, match=rf"{MANIFEST_NAME}: .*calibration\.{field}"):
        load_bundle(bundle)


@pytest.mark.parametrize("field, literal", [("threshold", "NaN"), ("threshold", "0"), ("pixel_threshold", "-1")])
def test_score_check_config_and_run_refuse_the_bundle_with_exit_78(tmp_path, field, literal):
    bundle = bad_bundle(tmp_path, field, literal)
    scored = run_cli("score", "--model", bundle, sorted(SAMPLES.glob("*.png"))[0])
    assert scored.returncode == EX_CONFIG and scored.stdout == ""
    one_error_line(scored.stderr, bundle, field)
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), model=str(bundle),
                          mqtt={"enabled": False})
    checked = run_cli("check-config", config)
    assert checked.returncode == EX_CONFIG and "OK" not in checked.stdout
    one_error_line(checked.stderr, bundle, field)
    daemon = DaemonProcess(config)
    assert daemon.wait(120) == EX_CONFIG
    one_error_line(daemon.log(), bundle, field)
    assert not (tmp_path / "state" / "evidence").exists() or not any((tmp_path / "state" / "evidence").iterdir())


def test_reload_to_a_nan_threshold_bundle_is_refused_and_the_running_model_keeps_inspecting(
        tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path)
    live = dict(source={"fps": 10, "loop": True}, mqtt={"heatmap": "never"})
    config = write_config(tmp_path, broker.port, frames, **live)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    got = lambda: unique_in_order(results(collector))  # noqa: E731
    assert collector.wait_for(lambda _: len(got()) >= 3, WAIT_S), daemon.log()[-3000:]

    bundle = bad_bundle(tmp_path, "threshold", "NaN")
    write_config(tmp_path, broker.port, frames, model=str(bundle), **live)
    collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "nan"}')
    replies = lambda: [r for r in collector.json_payloads(f"{BASE}/reply") if r["request_id"] == "nan"]  # noqa: E731
    assert collector.wait_for(lambda _: replies(), WAIT_S), daemon.log()[-3000:]
    [reply] = replies()
    assert reply["ok"] is False and str(bundle / MANIFEST_NAME) in reply["reason"]
    assert "calibration.threshold" in reply["reason"] and "\n" not in reply["reason"]
    before = len(got())
    assert collector.wait_for(lambda _: len(got()) >= before + 10, WAIT_S), daemon.log()[-3000:]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]
    calibrated = json.loads((MNIST_BUNDLE / MANIFEST_NAME).read_text())["calibration"]["threshold"]
    assert {r["threshold"] for r in got()} == {calibrated}
    assert {r["verdict"] for r in got()} == {"pass", "fail"}  # the 9s among the samples still fail


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "0", "-5"])
def test_config_threshold_override_must_be_finite_and_positive(tmp_path, value):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False})
    text = json.loads(config.read_text())
    text["inference"] = {"threshold": "@VALUE@"}
    config.write_text(json.dumps(text, indent=2).replace('"@VALUE@"', value))
    checked = run_cli("check-config", config)
    assert checked.returncode == EX_CONFIG
    [line] = [line for line in checked.stderr.splitlines() if line.startswith(f"{config}:")]  # not LiteRT's INFO
    assert "inference.threshold" in line


@pytest.mark.parametrize("value, accepted", [(1e6, False), (0.01, False), (30.0, True)])
def test_config_threshold_override_must_lie_within_the_bundles_range(tmp_path, value, accepted):
    """As for cmd/threshold: mnist-1 allows 0.25 .. 1369; beyond, every part would pass or every part fail."""
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                          inference={"threshold": value})
    checked = run_cli("check-config", config)
    if accepted:
        assert checked.returncode == 0, checked.stderr
        return
    assert checked.returncode == EX_CONFIG
    [line] = [line for line in checked.stderr.splitlines() if line.startswith(f"{config}:")]  # not LiteRT's INFO
    line_number = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if '"threshold"' in text)
    assert line.startswith(f"{config}:{line_number}: model: inference.threshold: threshold {value:.6g} is outside "
                           "0.250334 .. 1368.96")
    ran = run_cli("run", "--config", config)
    assert ran.returncode == EX_CONFIG and "inference.threshold" in ran.stderr and "Traceback" not in ran.stderr


def test_a_refused_threshold_just_outside_the_range_is_shown_apart_from_its_bound():
    calibration = Calibration(threshold=1.0, score_min=0.5, score_max=2.0)
    low, high = calibration.threshold_range()
    for value in (low * (1 - 1e-9), high * (1 + 1e-12)):
        problem = calibration.threshold_problem(value, "m")
        shown, bounds = problem.split(" is outside ")[0].split()[-1], problem.split(" is outside ")[1].split(",")[0]
        assert shown not in bounds.split(" .. "), problem
    assert calibration.threshold_problem(low, "m") is None and calibration.threshold_problem(high, "m") is None


def test_a_nan_score_fails_the_part():
    assert verdict(math.nan, 21.7) == "fail"
    assert verdict(21.6, 21.7) == "pass" and verdict(21.7, 21.7) == "fail"


def test_calibration_refuses_absurd_numbers_however_it_is_made():
    for bad in ({"threshold": math.nan}, {"threshold": 0.0}, {"threshold": 1.0, "pixel_threshold": math.inf},
                {"threshold": 1.0, "score_min": 5.0, "score_max": 2.0}):
        with pytest.raises(ValueError, match="calibration"):
            Calibration(**bad)


def test_every_json_writer_refuses_nan_and_infinity(tmp_path):
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            messages.to_json({"score": value})
        result = SimpleNamespace(score=value, score_norm=0.5, threshold=21.7, verdict="fail", regions=[],
                                 reason=None)
        with pytest.raises(ValueError):
            messages.score_line("a.png", result)
        with pytest.raises(ValueError):
            write_json_atomic(tmp_path / "metrics.json", {"auroc": value})
        assert not (tmp_path / "metrics.json").exists() and list(tmp_path.iterdir()) == []


def test_the_strict_parser_the_payload_tests_use_refuses_what_json_loads_takes():
    for text in ('{"score": NaN}', '{"score": Infinity}', '{"score": -Infinity}', '{"score": 1e400}'):
        json.loads(text)  # Python takes them ...
        with pytest.raises(NotStrictJSON):
            strict_json(text)  # ... a dashboard does not
    assert strict_json(b'{"score": 21.5, "regions": []}') == {"score": 21.5, "regions": []}
