"""`lineguard check-config`: every problem of the file in one pass, each on its key's line; `--probe` opens the
source once and logs in to a real Mosquitto that has a password file."""
from __future__ import annotations

import json
import re

from tests.support.daemon_harness import sample_folder, write_config
from tests.support.helpers import MNIST_BUNDLE, run_cli
from tests.test_security import password_file

CONFIG = """\
device_id: cell-7
model: {missing}/bundle
source:
  kind: folder
  path: {missing}/frames
  fps: 0
mqtt:
  enabled: false
  colour: blue
storage:
  dir: {state}
"""


def test_a_key_error_a_missing_model_and_a_missing_folder_come_in_one_pass_each_with_its_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(missing=tmp_path / "nowhere", state=tmp_path / "state"))
    result = run_cli("check-config", config)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [re.match(rf"{re.escape(str(config))}:(\d+): ([a-z.]+)", line).groups() for line in lines] == [
        ("2", "model"), ("5", "source.path"), ("9", "mqtt.colour")], result.stderr
    assert "unknown key 'colour'" in lines[2] and "nowhere/frames" in lines[1] and "nowhere/bundle" in lines[0]


def test_a_key_in_error_is_reported_once_not_again_by_the_later_checks(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(missing=tmp_path / "nowhere", state=tmp_path / "state")
                      .replace("fps: 0", "fps: fast").replace(f"model: {tmp_path}/nowhere/bundle",
                                                              f"model: {MNIST_BUNDLE}"))
    lines = [line for line in run_cli("check-config", config).stderr.splitlines() if line.startswith(str(config))]
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in lines] == ["5", "6", "9"], lines


def probe_config(tmp_path, broker_port: int, **sections):
    config = write_config(tmp_path, broker_port, sample_folder(tmp_path, count=2),
                          mqtt={"username": "line"}, **sections)
    text = json.dumps(json.loads(config.read_text()), indent=2)  # one key a line: each problem has its own line
    config.write_text(text)
    return config, text.splitlines()


def line_of(lines: list[str], key: str) -> int:
    return next(number for number, line in enumerate(lines, 1) if line.strip().startswith(f'"{key}"'))


def test_probe_reports_a_refused_login_and_a_missing_camera_and_passes_a_good_station(tmp_path, make_broker):
    passwd = password_file(tmp_path, {"line": "right-Pa55"})
    broker = make_broker([f"password_file {passwd}"], allow_anonymous=False)
    config, lines = probe_config(tmp_path, broker.port, source={"kind": "camera", "index": 7})
    without = run_cli("check-config", config, env={"LINEGUARD_MQTT_PASSWORD": "wrong-Pa55"})
    assert without.returncode == 0, without.stderr  # nothing is opened without --probe
    probed = run_cli("check-config", "--probe", config, env={"LINEGUARD_MQTT_PASSWORD": "wrong-Pa55"})
    assert probed.returncode == 78, probed.stderr
    assert [line for line in probed.stderr.splitlines() if line.startswith(str(config))] == [
        f"{config}:{line_of(lines, 'index')}: source.index: cannot open camera /dev/video7: no such device",
        f"{config}:{line_of(lines, 'username')}: mqtt.username: broker 127.0.0.1:{broker.port} refused the login: "
        "not authorized"], probed.stderr
    assert "wrong-Pa55" not in probed.stderr + probed.stdout

    (tmp_path / "good").mkdir()
    good, _ = probe_config(tmp_path / "good", broker.port)
    ok = run_cli("check-config", "--probe", good, env={"LINEGUARD_MQTT_PASSWORD": "right-Pa55"})
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    assert "as lineguard-cell-7-probe" in broker.log_text()  # a client id of its own: a running station stays on
