"""GPIO through gpiozero's mock pin factory, chosen by config (io.gpio.pin_factory: mock) like any other: the daemon
runs in this process (mock pins live in it) against a real broker; the test drives the trigger pin and reads
the pulses on the reject/pass pins, matched to the `result` with the same seq."""
from __future__ import annotations

import threading
import time

import pytest

from edge.config.errors import ConfigError
from edge.config.load import load_config
from edge.daemon import Daemon
from edge.notify import SystemdNotifier
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import MNIST_BUNDLE, run_cli, wait_until

TRIGGER_PIN, REJECT_PIN, PASS_PIN, READY_PIN, BUSY_PIN = 17, 22, 27, 5, 6
PULSE_MS = 120.0
DEBOUNCE_MS = 100.0  # wide: a loaded machine may pause the test between two edges of one bounce


def gpio_config(**overrides) -> dict:
    return {"gpio": {"enabled": True, "pin_factory": "mock", "trigger_pin": TRIGGER_PIN, "trigger_edge": "rising",
                     "pull": "down", "debounce_ms": DEBOUNCE_MS, "reject_pin": REJECT_PIN, "pass_pin": PASS_PIN,
                     "pulse_ms": PULSE_MS, "ready_pin": READY_PIN, "busy_pin": BUSY_PIN, **overrides}}


@pytest.fixture
def station(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6), source={"fps": 0, "loop": True},
                          trigger={"mode": "triggered"}, io=gpio_config())
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/stats"])
    daemon = Daemon(load_config(config), config)
    daemon.notifier = SystemdNotifier(env={})  # never notify a systemd that runs the tests
    daemon.start()
    loop = threading.Thread(target=daemon.run, name="frame-loop", daemon=True)
    loop.start()
    pins = daemon.io.gpio.factory.pin
    yield daemon, collector, pins
    daemon.stop.set()
    loop.join(10)
    daemon.shutdown(clean=True)
    assert pins(READY_PIN).state is False  # a stopped station is not ready


def pulses(pin) -> list[float]:
    """Lengths (s) of the completed high pulses in a mock pin's history."""
    lengths, high = [], False
    for state in pin.states[1:]:
        if state.state and not high:
            high = True
        elif high and not state.state:
            lengths.append(state.timestamp)
            high = False
    return lengths


def edge(pins, high: bool) -> None:
    trigger = pins(TRIGGER_PIN)
    trigger.drive_high() if high else trigger.drive_low()


def test_a_trigger_edge_inspects_and_pulses_the_output_of_its_verdict(station):
    daemon, collector, pins = station
    assert wait_until(lambda: pins(READY_PIN).state is True, 10)  # once the frame loop runs
    assert pins(BUSY_PIN).state is False
    for count in range(1, 7):  # the sample frames hold good parts and defects: both outputs are exercised
        for pin in (REJECT_PIN, PASS_PIN, BUSY_PIN):
            pins(pin).clear_states()
        edge(pins, True)
        assert collector.wait_for(lambda m: len(results(collector)) >= count, 15)
        result = max(results(collector), key=lambda r: r["seq"])
        edge(pins, False)  # a falling edge is no trigger with trigger_edge: rising
        expected, other = (PASS_PIN, REJECT_PIN) if result["verdict"] == "pass" else (REJECT_PIN, PASS_PIN)
        assert wait_until(lambda: len(pulses(pins(expected))) == 1, 5), (result, pins(expected).states)
        [length] = pulses(pins(expected))
        assert PULSE_MS / 1000.0 * 0.8 <= length <= PULSE_MS / 1000.0 + 0.25, length
        assert pulses(pins(other)) == [] and pins(other).state is False, result
        assert len(pulses(pins(BUSY_PIN))) == 1  # busy from the edge until the answer
        assert result["seq"] == daemon.station.recorder.last_seq
    assert {r["verdict"] for r in results(collector)} == {"pass", "fail"}
    assert len(results(collector)) == 6  # falling edges triggered nothing


def test_contact_bounce_is_one_trigger_and_a_trigger_while_busy_is_counted(station):
    daemon, collector, pins = station
    for _ in range(3):  # bounce: edges within debounce_ms of the first
        edge(pins, True)
        edge(pins, False)
    assert collector.wait_for(lambda m: len(results(collector)) >= 1, 15)
    time.sleep(DEBOUNCE_MS / 1000.0 + 0.2)
    assert len(results(collector)) == 1 and daemon.triggers.stats()["received"] == 1
    # Two clean edges, the second while the first waits for its frame (a slow replay makes it wait).
    daemon.cfg = daemon.cfg.model_copy(update={"trigger": daemon.cfg.trigger.model_copy(update={"delay_ms": 800.0})})
    edge(pins, True)
    edge(pins, False)
    time.sleep(DEBOUNCE_MS / 1000.0 + 0.05)
    edge(pins, True)
    edge(pins, False)
    assert wait_until(lambda: daemon.triggers.stats()["inspected"] == 2, 10)
    counts = daemon.triggers.stats()
    assert (counts["received"], counts["busy"]) == (3, 1)
    daemon.report.stats()
    assert collector.wait_for(lambda m: any(strict_json(p)["triggers"]["busy"] == 1
                                            for p in collector.payloads(f"{BASE}/stats")), 10)


def test_a_pin_factory_that_cannot_run_here_stops_start_up_with_the_key(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                          io=gpio_config(pin_factory="lgpio"))
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 78, daemon.log()[-3000:]
    assert "io.gpio.pin_factory: lgpio cannot run here" in daemon.log()


def test_check_config_names_a_pin_factory_that_cannot_run_here(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                          io=gpio_config(pin_factory="lgpio"))
    out = run_cli("check-config", str(config))
    assert out.returncode == 78, out.stdout + out.stderr
    assert "io.gpio.pin_factory: lgpio cannot run here" in out.stdout + out.stderr
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                          io=gpio_config())  # mock: loads anywhere
    assert run_cli("check-config", str(config)).returncode == 0


def test_one_pin_for_two_lines_is_refused_with_its_line_number(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {MNIST_BUNDLE}\nsource: {{path: {tmp_path}}}\n"
                      "io:\n  gpio:\n    enabled: true\n    trigger_pin: 17\n    reject_pin: 17\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    [error] = info.value.errors
    assert "io.gpio" in error and "pin 17 is used for more than one line (trigger_pin, reject_pin)" in error, error


@pytest.mark.parametrize("pull", ["up", "down", "none"])
@pytest.mark.parametrize("trigger_edge", ["rising", "falling"])
def test_the_configured_edge_and_only_it_triggers(pull, trigger_edge):
    """GpioLines on the mock factory (as the config names it): whatever the pull, the electrical edge decides."""
    from edge.config.io import GpioConfig
    from edge.io.gpio import GpioLines

    triggers = []
    lines = GpioLines(GpioConfig(enabled=True, pin_factory="mock", trigger_pin=TRIGGER_PIN, pull=pull,
                                 trigger_edge=trigger_edge, debounce_ms=0.0), triggers.append)
    try:
        pin = lines.factory.pin(TRIGGER_PIN)
        idle_high = pull == "up"
        if pin.state != idle_high:
            (pin.drive_high if idle_high else pin.drive_low)()
        triggers.clear()
        first, second = (pin.drive_low, pin.drive_high) if idle_high else (pin.drive_high, pin.drive_low)
        first()
        after_first = len(triggers)
        second()
        wanted_first = (trigger_edge == "rising") != idle_high  # leaving a low idle level is a rising edge
        assert (after_first, len(triggers)) == ((1, 1) if wanted_first else (0, 1))
        assert all(t.origin == "gpio" for t in triggers)
    finally:
        lines.close()
