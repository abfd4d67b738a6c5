"""The daemon as a real process against a real Mosquitto: every verdict delivered, in order, once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from edge.publish import messages
from tests.support.daemon_harness import (
    BASE, DaemonProcess, replay_to_end, results, sample_folder, score_cli, unique_in_order, write_config,
)
from tests.support.broker import strict_json
from tests.support.helpers import MNIST_BUNDLE, ROOT, run_cli, wait_until

RESULT_FIELDS = {"id", "seq", "ts", "device_id", "image", "part_id", "score", "score_norm", "threshold", "verdict",
                 "regions", "model", "latency_ms"}


def assert_consecutive_from_1(got: list[dict]) -> None:
    """Delivered in order with no seq missing: sorted order alone would not see a gap."""
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))


def test_folder_replay_gives_one_result_per_frame_equal_to_score(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path)
    collector = make_collector(broker, [f"{BASE}/#"])
    files, got = replay_to_end(write_config(tmp_path, broker.port, frames), collector)
    assert len(got) == len(files) == len(results(collector))
    assert RESULT_FIELDS <= got[0].keys()
    assert [r["image"] for r in got] == [p.name for p in files]
    assert_consecutive_from_1(got)
    assert len({r["id"] for r in got}) == len(got)
    expected = score_cli(files)
    for r in got:
        assert r["score"] == expected[r["image"]]["score"]
        assert r["verdict"] == expected[r["image"]]["verdict"]
        assert r["model"]["sha256"] == json.loads((MNIST_BUNDLE / "model.json").read_text())["stages"][0]["sha256"]
    failed = [r for r in got if r["verdict"] == "fail"]
    assert failed and all("digit9" in r["image"] for r in failed)
    # The station's last message is status offline: once the subscriber has it, it has all the others.
    assert collector.wait_for(lambda _: collector.payloads(f"{BASE}/status")[-1:] == [b"offline"], 10)
    alerts = [strict_json(p) for p in collector.payloads(f"{BASE}/alert")]
    assert [a["id"] for a in alerts] == [r["id"] for r in failed]
    assert len(collector.payloads(f"{BASE}/heatmap")) == len(failed)
    assert collector.payloads(f"{BASE}/status")[-1] == b"offline"
    evidence = list((tmp_path / "state" / "evidence").glob("*-heat.jpg"))
    assert len(evidence) == len(failed)


def test_broker_restart_mid_replay_loses_nothing(tmp_path, make_broker, make_collector):
    broker = make_broker(persistence=True)
    frames = sample_folder(tmp_path)
    collector = make_collector(broker, [f"{BASE}/result"], client_id="dashboard", clean_session=False)
    daemon = DaemonProcess(write_config(tmp_path, broker.port, frames, source={"fps": 8}))
    assert collector.wait_for(3, 30), daemon.log()[-2000:]
    broker.stop()
    time.sleep(2.0)
    broker.start()
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    assert collector.wait_for(lambda m: len(unique_in_order(results(collector))) >= 20, 20)
    got = unique_in_order(results(collector))
    assert [r["image"] for r in got] == sorted(p.name for p in frames.glob("*.png"))
    assert_consecutive_from_1(got)


def test_outbox_survives_sigkill_while_broker_is_down(tmp_path, make_broker, make_collector):
    broker = make_broker(start=False)
    frames = sample_folder(tmp_path)
    config = write_config(tmp_path, broker.port, frames)
    first = DaemonProcess(config)
    assert first.wait_for_log("pending message(s), waiting up to", 60), first.log()[-2000:]
    first.kill()  # SIGKILL after every frame was inspected, nothing delivered
    broker.start()
    collector = make_collector(broker, [f"{BASE}/result"])
    names = sorted(p.name for p in frames.glob("*.png"))
    for path in frames.glob("*.png"):
        path.unlink()
    second = DaemonProcess(config)
    assert second.wait(60) == 0, second.log()[-3000:]
    assert collector.wait_for(20, 10)
    got = unique_in_order(results(collector))
    assert [r["image"] for r in got] == names
    assert_consecutive_from_1(got)  # the second start inspected nothing and spent no seq


def test_status_offline_on_sigkill_and_on_sigterm_and_state_tells_them_apart(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=4)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 5, "loop": True})
    collector = make_collector(broker, [f"{BASE}/status"])
    live_state = make_collector(broker, [f"{BASE}/state"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: m and m[-1].payload == b"online", 30), daemon.log()[-2000:]
    assert live_state.wait_for(lambda m: any(strict_json(x.payload)["source"] == "running" for x in m), 30)
    daemon.kill()
    assert collector.wait_for(lambda m: m[-1].payload == b"offline", 10)
    state = make_collector(broker, [f"{BASE}/state"])  # the retained state a crash left behind
    assert state.wait_for(lambda m: m and strict_json(m[0].payload)["source"] == "running", 10)
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: m[-1].payload == b"online", 30)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert collector.wait_for(lambda m: m[-1].payload == b"offline", 10)
    retained = make_collector(broker, [f"{BASE}/status", f"{BASE}/state"])
    assert retained.wait_for(lambda m: len(m) >= 2, 10)
    final = {m.topic.rsplit("/", 1)[1]: m.payload for m in retained.messages if m.retain}
    assert final["status"] == b"offline" and strict_json(final["state"])["source"] == "stopped"


def test_check_config_reports_four_errors_with_lines(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "device_id: cell-7\n"
        "source:\n"
        "  kind: folder\n"
        "  path: frames\n"
        "  fps: -5\n"
        "mqtt:\n"
        "  host: 127.0.0.1\n"
        "  port: fast\n"
        "  topic_prefx: lineguard\n"
        "device_id: cell-8\n",
        encoding="utf-8",
    )
    out = run_cli("check-config", config)
    assert out.returncode == 78
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith(f"{config}:5: source.fps:") for line in lines), lines
    assert any(line.startswith(f"{config}:8: mqtt.port:") for line in lines), lines
    assert any(line.startswith(f"{config}:9: mqtt.topic_prefx:") for line in lines), lines
    assert any(line.startswith(f"{config}:10: device_id:") and "duplicate" in line for line in lines), lines
    daemon = run_cli("run", "--config", config)
    assert daemon.returncode == 78


def test_malformed_commands_are_refused_and_daemon_keeps_running(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=4)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 5, "loop": True})
    collector = make_collector(broker, [f"{BASE}/reply", f"{BASE}/stats", f"{BASE}/status"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
    bad = [
        ("threshold", b"not json"),
        ("threshold", b'{"threshold": "high"}'),
        ("threshold", b'{"threshold": -1}'),
        ("threshold", b'{"threshold": 5, "extra": 1}'),
        ("threshold", b"[1, 2]"),
        ("trigger", b'{"part_id": 12}'),
        ("reload", b"x" * 10000),
        ("selfdestruct", b"{}"),
    ]
    for name, payload in bad:
        collector.publish(f"{BASE}/cmd/{name}", payload)
    replies = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/reply")]
    assert collector.wait_for(lambda m: len(replies()) >= len(bad), 15), replies()
    assert all(r["ok"] is False and r["reason"] for r in replies())
    collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": 123.5, "request_id": "r1"}')
    assert collector.wait_for(lambda m: any(r.get("request_id") == "r1" and r["ok"] for r in replies()), 15)
    stats = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/stats")]
    assert collector.wait_for(lambda m: any(s["threshold"] == 123.5 for s in stats()), 15)
    assert daemon.process.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_mqtt_trigger_echoes_the_part_id(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=6)
    config = write_config(tmp_path, broker.port, frames, trigger={"mode": "mqtt"}, source={"fps": 0, "loop": True})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/status", f"{BASE}/reply", f"{BASE}/stats"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
    # Stats come from the main loop between frames: two of them with no frame counted mean the loop has
    # gone round idle, and a frame inspected without a trigger would have been counted first.
    stats = lambda: [json.loads(p) for p in collector.payloads(f"{BASE}/stats")]
    assert collector.wait_for(lambda m: len(stats()) >= 2, 30), daemon.log()[-2000:]
    assert [s["frames"] for s in stats()] == [0] * len(stats())
    assert results(collector) == []  # nothing inspected without a trigger
    replies = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/reply")]
    for count, part in enumerate(("P-001", "P-002"), start=1):  # one at a time: a trigger while busy is refused
        collector.publish(f"{BASE}/cmd/trigger", json.dumps({"part_id": part, "request_id": f"r-{part}"}))
        assert collector.wait_for(lambda m: len(replies()) >= count, 15), daemon.log()[-2000:]
    assert collector.wait_for(lambda m: len(results(collector)) >= 2, 15), daemon.log()[-2000:]
    assert [r["part_id"] for r in results(collector)] == ["P-001", "P-002"]
    seqs = [r["seq"] for r in results(collector)]
    assert seqs == [1, 2]
    assert [(r["request_id"], r["ok"], r["reason"], r["seq"]) for r in replies()] == [
        (f"r-P-00{i + 1}", True, f"inspected as seq {seq}", seq) for i, seq in enumerate(seqs)]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_systemd_notifications(tmp_path, broker):
    """READY=1 once set up, WATCHDOG=1 after inspections, STOPPING=1 at the end: bytes on a real socket."""
    frames = sample_folder(tmp_path, count=5)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
    daemon = DaemonProcess(write_config(tmp_path, broker.port, frames, source={"fps": 20}), env)
    assert daemon.wait(60) == 0, daemon.log()[-2000:]
    received = []
    while True:
        try:
            received.append(notify.recv(4096).decode())
        except OSError:
            break
    kinds = [m.split("\n")[0] for m in received]
    assert "READY=1" in kinds and "WATCHDOG=1" in kinds and "STOPPING=1" in kinds, received
    assert kinds.index("READY=1") < kinds.index("WATCHDOG=1") < kinds.index("STOPPING=1")


def test_make_demo_works_without_a_broker_and_serves_the_page_until_ctrl_c(tmp_path):
    """The README's first command on the bundled model and frames, with nothing listening: it prints the station
    page's address, the page works on the replay's verdicts, and Ctrl-C (SIGINT to the terminal's process group)
    ends it."""
    output = tmp_path / "demo.log"
    started = messages.utc_now()  # the page's history also holds earlier demo runs' verdicts: count this run's
    with open(output, "wb") as sink:
        make = subprocess.Popen(["make", "-s", "demo"], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        assert wait_until(lambda: "the station page stays up" in output.read_text() or make.poll() is not None, 180)
        text = output.read_text()
        assert "station page: http://127.0.0.1:8080/" in text and "the station page stays up" in text, text[-3000:]
        with urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5) as response:
            assert json.loads(response.read())["status"] == "inspecting"
        with urllib.request.urlopen("http://127.0.0.1:8080/api/review?filter=fail", timeout=5) as response:
            fails = [v for v in json.loads(response.read())["verdicts"] if v["ts"] >= started]
        with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5) as response:
            assert b"lineguard" in response.read()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        make.wait(60)
    text = output.read_text()
    verdict_lines = [line for line in text.splitlines() if " PASS " in line or " FAIL " in line]
    assert len(verdict_lines) == len(list((ROOT / "samples" / "mnist").glob("*.png")))
    assert all("digit9" in line for line in verdict_lines if " FAIL " in line)
    assert len(fails) == sum(" FAIL " in line for line in verdict_lines) and all("digit9" in v["image"] for v in fails)
    assert "Traceback" not in text


def test_seq_is_exactly_1_to_n_across_every_kind_of_restart(tmp_path, broker, make_collector):
    """Clean exit, SIGKILL mid-replay, exit 78 (broken bundle, missing source folder) and a SIGTERM while idle in
    trigger mode: only verdicts get a seq, so subscribers see exactly 1..N."""
    frames = sample_folder(tmp_path, count=4)
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/status"])
    config = lambda **sections: write_config(tmp_path, broker.port, frames, **sections)
    delivered = lambda: unique_in_order(results(collector))
    starts = []

    def run(expected_code: int, **sections) -> None:
        daemon = DaemonProcess(config(**sections))
        starts.append(daemon)
        assert daemon.wait(90) == expected_code, daemon.log()[-3000:]
        assert "Traceback" not in daemon.log()

    run(0)  # a clean replay of 4 frames
    assert collector.wait_for(lambda _: len(delivered()) >= 4, 20)

    looping = DaemonProcess(config(source={"fps": 10, "loop": True}))
    starts.append(looping)
    assert collector.wait_for(lambda _: len(delivered()) >= 7, 60), looping.log()[-3000:]
    looping.kill()  # SIGKILL mid-replay

    broken = tmp_path / "broken-bundle"
    shutil.copytree(MNIST_BUNDLE, broken)
    (broken / "model.json").write_text("{}")
    run(78, model=str(broken))
    run(78, source={"path": str(tmp_path / "no-such-folder")})

    idle = DaemonProcess(config(trigger={"mode": "mqtt"}, source={"fps": 0, "loop": True}))
    starts.append(idle)
    assert idle.wait_for_log("ready:", 60), idle.log()[-3000:]
    idle.signal(signal.SIGTERM)
    assert idle.wait(30) == 0, idle.log()[-3000:]

    before_last = len(delivered())
    run(0)  # a last clean replay, which also delivers whatever the killed one left in the outbox (first)
    assert collector.wait_for(lambda _: len(delivered()) >= before_last + 4, 30)
    seqs = sorted(r["seq"] for r in delivered())
    assert seqs == list(range(1, len(seqs) + 1)), [(r["seq"], r["image"], r["id"][:6]) for r in delivered()]
    assert len(seqs) >= 4 + 3 + 4
    assert all("Traceback" not in d.log() for d in starts)
