"""Case 7, trigger -> verdict latency: how long a PLC waits for the answer to a trigger.

The real `lineguard run` process in trigger mode reads a live MJPEG stream (tests/support/mjpeg.py, the sample
MNIST frames at STREAM_FPS over HTTP on loopback), with trigger.delay_ms 0 and the Modbus slave on. Triggers
alternate between the two interfaces a PLC or a line controller would use, at random phases against the frame
clock, so the wait for the first frame captured after the trigger (0 .. one frame period) is sampled evenly:
- Modbus: write the trigger coil, then poll the answer counter every POLL_S until it moves;
- MQTT: publish cmd/trigger, and time the reply's arrival (QoS 1 through the local Mosquitto).
Latency is measured by the client, from just before the write or publish to the answer: it includes that wait,
decoding, inspection, the durable outbox write and the transport.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient

from benchmarks.common import (
    DEVICE_ID, PYTHON, ROOT, TOPIC_PREFIX, local_broker, log, percentile, rounded, scratch_dir,
)

STREAM_FPS = 30.0
TRIGGERS_PER_INTERFACE = 100
GAP_S = (0.08, 0.16)  # between triggers: random, so triggers fall at every phase of the frame clock
POLL_S = 0.001  # Modbus poll interval while waiting for the answer
ANSWER_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0
WARMUP_TRIGGERS = 5  # per interface, not counted: first inspections warm the interpreter
BASE = f"{TOPIC_PREFIX}/{DEVICE_ID}"
IR_ANSWER_COUNT, IR_LAST_ANSWER, ANSWER_INSPECTED = 11, 13, 1  # the register map (README)


def free_port() -> int:
    from tests.support.broker import free_port as pick
    return pick()


def start_daemon(work: Path, stream_url: str, broker_port: int, modbus_port: int) -> subprocess.Popen:
    config = {
        "device_id": DEVICE_ID, "model": str(ROOT / "models" / "mnist-1"),
        "source": {"kind": "stream", "url": stream_url},
        "trigger": {"mode": "triggered", "delay_ms": 0},
        "inference": {"threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": TOPIC_PREFIX, "heatmap": "never"},
        "storage": {"dir": str(work / "state"), "evidence": "never"},
        "io": {"modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port}},
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    log_file = open(work / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([PYTHON, "-m", "edge.cli", "run", "--config", str(path)], cwd=ROOT, stdout=log_file,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)


class MqttTriggers:
    """Publishes cmd/trigger and records when each reply arrives, by request_id."""

    def __init__(self, port: int) -> None:
        self.replies: dict[str, tuple[float, dict]] = {}
        self.arrived = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-trigger")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{BASE}/reply", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        received_s = time.monotonic()
        reply = json.loads(message.payload)
        with self.arrived:
            self.replies[reply.get("request_id")] = (received_s, reply)
            self.arrived.notify_all()

    def trigger(self, request_id: str) -> tuple[float, dict]:
        sent_s = time.monotonic()
        self.client.publish(f"{BASE}/cmd/trigger", json.dumps({"request_id": request_id}), qos=1)
        with self.arrived:
            if not self.arrived.wait_for(lambda: request_id in self.replies, ANSWER_TIMEOUT_S):
                raise RuntimeError(f"no reply to MQTT trigger {request_id}")
            received_s, reply = self.replies[request_id]
        return (received_s - sent_s) * 1000.0, reply

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ModbusTriggers:
    """Writes the trigger coil and polls the answer counter, as a PLC does (at a much faster cycle)."""

    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
        if not self.client.connect():
            raise RuntimeError(f"cannot reach the daemon's Modbus port {port}")

    def answers(self) -> list[int]:
        words = self.client.read_input_registers(0, count=IR_LAST_ANSWER + 1, device_id=1).registers
        return [words[IR_ANSWER_COUNT] << 16 | words[IR_ANSWER_COUNT + 1], words[IR_LAST_ANSWER]]

    def trigger(self) -> tuple[float, int]:
        before, _ = self.answers()
        sent_s = time.monotonic()
        self.client.write_coil(0, True, device_id=1)
        deadline_s = sent_s + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline_s:
            count, answer = self.answers()
            if count > before:
                return (time.monotonic() - sent_s) * 1000.0, answer
            time.sleep(POLL_S)
        raise RuntimeError("no answer to the Modbus trigger")


def wait_ready(log_path: Path, process: subprocess.Popen) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s and process.poll() is None:
        if b"modbus: listening" in log_path.read_bytes() and b"ready:" in log_path.read_bytes():
            return
        time.sleep(0.1)
    raise RuntimeError(f"daemon not ready:\n{log_path.read_text(errors='replace')[-3000:]}")


def summary(latencies_ms: list[float]) -> dict:
    return {"p50": rounded(percentile(latencies_ms, 50)), "p99": rounded(percentile(latencies_ms, 99)),
            "max": rounded(max(latencies_ms, default=None)), "n": len(latencies_ms)}


def run() -> dict:
    from tests.support.mjpeg import MjpegServer

    frames = [cv2.imread(str(path)) for path in sorted((ROOT / "samples" / "mnist").glob("*.png"))]
    camera = MjpegServer(fps=STREAM_FPS, image=lambda counter: frames[counter % len(frames)])
    camera.start()
    rng = random.Random(11)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    latencies: dict[str, list[float]] = {"modbus": [], "mqtt": []}
    not_inspected = 0
    try:
        with scratch_dir("trigger") as work, local_broker(work) as broker:
            modbus_port = free_port()
            daemon = start_daemon(work, camera.url, broker.port, modbus_port)
            try:
                wait_ready(work / "daemon.log", daemon)
                time.sleep(1.0)  # frames flowing
                plc, controller = ModbusTriggers(modbus_port), MqttTriggers(broker.port)
                log("case 7: %d triggers per interface on a %.0f fps stream", TRIGGERS_PER_INTERFACE, STREAM_FPS)
                for index in range(TRIGGERS_PER_INTERFACE + WARMUP_TRIGGERS):
                    for interface in rng.sample(("modbus", "mqtt"), 2):
                        time.sleep(rng.uniform(*GAP_S))
                        if interface == "modbus":
                            latency_ms, answer = plc.trigger()
                            inspected = answer == ANSWER_INSPECTED
                        else:
                            latency_ms, reply = controller.trigger(f"t{index}")
                            inspected = reply["seq"] is not None
                        not_inspected += not inspected
                        if index >= WARMUP_TRIGGERS and inspected:
                            latencies[interface].append(latency_ms)
                controller.close()
                plc.client.close()
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
    finally:
        camera.stop()
    figures = {name: summary(values) for name, values in latencies.items()}
    log("  modbus p50 %s p99 %s ms; mqtt p50 %s p99 %s ms; %d not inspected", figures["modbus"]["p50"],
        figures["modbus"]["p99"], figures["mqtt"]["p50"], figures["mqtt"]["p99"], not_inspected)
    return {"trigger_latency": {
        "source": f"MJPEG stream over HTTP on loopback, {STREAM_FPS:.0f} fps, mnist-1, 1 thread, delay_ms 0",
        "frame_period_ms": rounded(1000.0 / STREAM_FPS), "modbus_poll_ms": POLL_S * 1000.0,
        "modbus_ms": figures["modbus"], "mqtt_ms": figures["mqtt"], "not_inspected": not_inspected,
        "load_average_at_start_and_end": [load_at_start, [round(v, 2) for v in os.getloadavg()]],
    }}
