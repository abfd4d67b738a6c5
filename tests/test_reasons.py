"""Reasons everywhere: a station whose camera is missing and whose broker refuses its login says so, in the same
words, in its stats, on /healthz, in /metrics and on the station page's header. Real daemons, a real Mosquitto
with a password file, headless Chromium."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from tests.support.broker import free_port
from tests.support.browser import start_chromium
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import wait_until
from tests.test_metrics import samples
from tests.test_payload_schema import validate
from tests.test_security import password_file

CAMERA_AWAY = "cannot open camera /dev/video7: no such device"
REFUSED = "broker refused: not authorized"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def health(url: str) -> tuple[int, dict]:
    try:
        status, body = get(url + "healthz")
    except OSError:
        return 0, {}
    return status, json.loads(body)


def refused_station(tmp_path, broker, name: str, **sections) -> tuple[DaemonProcess, str]:
    folder = tmp_path / name
    folder.mkdir()
    port = free_port()
    config = write_config(folder, broker.port, sample_folder(folder), web={"enabled": True, "port": port},
                          mqtt={"username": "line"}, **sections)
    daemon = DaemonProcess(config, {"LINEGUARD_MQTT_PASSWORD": "wrong-Pa55"})
    return daemon, f"http://127.0.0.1:{port}/"


@pytest.mark.slow
def test_a_missing_camera_and_a_refused_login_show_in_stats_healthz_metrics_and_the_page(tmp_path, make_broker):
    passwd = password_file(tmp_path, {"line": "right-Pa55"})
    broker = make_broker([f"password_file {passwd}"], allow_anonymous=False)
    camera, camera_url = refused_station(tmp_path, broker, "camera", source={"kind": "camera", "index": 7})
    # The same refusal with a folder that inspects: a broker outage alone is no 503, the outbox holds the verdicts.
    folder, folder_url = refused_station(tmp_path, broker, "folder", source={"fps": 5, "loop": True})
    driver = None
    try:
        def both_reasons() -> bool:
            status, body = health(camera_url)
            return status == 503 and len(body.get("reasons", [])) == 2
        assert wait_until(both_reasons, 60), (health(camera_url), camera.log()[-3000:])
        status, body = health(camera_url)
        assert body["status"] == "not inspecting"
        assert body["reasons"] == [f"source: {CAMERA_AWAY}", REFUSED]
        assert body["components"]["model"] == {"up": True, "state": "loaded", "last_error": None}

        stats = json.loads(get(camera_url + "api/stats")[1])
        validate("stats", stats)
        parts = stats["components"]
        assert parts["source"]["up"] is False and parts["source"]["last_error"] == CAMERA_AWAY
        assert parts["broker"] == {"up": False, "state": "refused", "last_error": REFUSED}
        assert parts["outbox"]["up"] is True

        scraped = samples(get(camera_url + "metrics")[1].decode())
        up = {labels[0][1]: value for (name, labels), value in scraped.items() if name == "lineguard_component_up"}
        assert up == {"source": 0.0, "broker": 0.0, "outbox": 1.0, "model": 1.0}

        assert wait_until(lambda: health(folder_url)[1].get("reasons") == [REFUSED], 60), folder.log()[-3000:]
        status, body = health(folder_url)
        assert status == 200 and body["status"] == "inspecting"
        assert body["components"]["outbox"]["state"] == "holding"

        driver = start_chromium(tmp_path / "chromium-profile")
        driver.get(camera_url)
        header = driver.find_element(By.ID, "reasons")
        assert wait_until(lambda: CAMERA_AWAY in header.text and REFUSED in header.text, 30), header.text
        for tab in ("review", "threshold", "stats", "live"):  # the header line stays on every tab
            driver.find_element(By.CSS_SELECTOR, f'.tab[data-tab="{tab}"]').click()
            assert header.is_displayed() and REFUSED in header.text
        assert "right-Pa55" not in camera.log() + folder.log() and "wrong-Pa55" not in camera.log()
    finally:
        if driver is not None:
            driver.quit()
        camera.kill()
        folder.kill()


def station_behind_acl(tmp_path, make_broker, acl_text: str, **sections) -> tuple[DaemonProcess, str]:
    """A station inspecting a looping folder, its page on, publishing to a Mosquitto with this ACL."""
    acl = tmp_path / "acl"
    acl.write_text(acl_text)
    broker = make_broker([f"acl_file {acl}"])
    port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), web={"enabled": True, "port": port},
                          source={"fps": 5, "loop": True}, **sections)
    return DaemonProcess(config), f"http://127.0.0.1:{port}/"


def refusing_health(daemon: DaemonProcess, url: str) -> dict:
    """/healthz once the broker shows as refusing (within 60 s): 200, still inspecting."""
    refusing = lambda: health(url)[1].get("components", {}).get("broker", {}).get("state") == "refusing"  # noqa: E731
    assert wait_until(refusing, 60), (health(url), daemon.log()[-3000:])
    status, body = health(url)
    assert status == 200 and body["status"] == "inspecting", body
    assert body["components"]["broker"]["last_error"].startswith("broker refused "), body
    return body


def test_a_connected_broker_that_refuses_the_results_shows_as_refusing_while_the_station_inspects(tmp_path,
                                                                                                 make_broker):
    """Connected is not delivering: a broker whose ACL refuses the results (MQTT 5 PUBACK "not authorized") is
    down in stats, /healthz and /metrics with the reason, while the station inspects and its outbox holds them."""
    allowed = "".join(f"topic write {BASE}/{topic}\n" for topic in ("status", "state", "stats"))
    daemon, url = station_behind_acl(tmp_path, make_broker, f"{allowed}topic read {BASE}/cmd/#\n")
    try:
        body = refusing_health(daemon, url)
        broker_part = body["components"]["broker"]
        assert broker_part["up"] is False, broker_part
        assert "not allowed by its ACL?" in broker_part["last_error"] and broker_part["last_error"] in body["reasons"]
        assert body["components"]["outbox"]["state"] == "holding"
        stats = json.loads(get(url + "api/stats")[1])
        validate("stats", stats)
        assert stats["outbox"]["depth"] > 0
        scraped = samples(get(url + "metrics")[1].decode())
        assert scraped[("lineguard_component_up", (("component", "broker"),))] == 0.0
    finally:
        daemon.kill()


def test_a_broker_that_refuses_the_sparkplug_data_shows_as_refusing_and_the_data_waits_in_the_outbox(tmp_path,
                                                                                                     make_broker):
    """The Sparkplug node has its own session and sender: DDATA its broker refuses (MQTT 5 PUBACK "not
    authorized") mark the broker refusing too, naming the node's data, while the station's own results flow."""
    node_topics = "".join(f"topic write spBv1.0/lg/{kind}/#\n" for kind in ("NBIRTH", "NDEATH", "DBIRTH"))
    daemon, url = station_behind_acl(tmp_path, make_broker,
                                     f"topic readwrite {BASE}/#\n{node_topics}topic read spBv1.0/lg/NCMD/#\n",
                                     sparkplug={"enabled": True, "group_id": "lg"})
    try:
        body = refusing_health(daemon, url)
        assert "Sparkplug DDATA message(s)" in body["components"]["broker"]["last_error"], body
        stats = json.loads(get(url + "api/stats")[1])
        validate("stats", stats)
        assert stats["delivered"] > 0 and stats["outbox"]["depth"] > 0  # results delivered, node data held
        assert "broker refused Sparkplug DDATA message" in daemon.log()
    finally:
        daemon.kill()
