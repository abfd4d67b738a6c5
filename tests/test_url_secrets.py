"""Credentials in camera URLs and GStreamer pipelines never reach a log line, a payload or `check-config` output.

Every form is covered: a URL's userinfo, query keys naming a password, token, secret, key or auth, and
GStreamer properties (user-pw, password, passwd, and location= URLs inside a pipeline, quoted or not).
The end-to-end test runs the real daemon on an unreachable stream against a real broker.
"""
from __future__ import annotations

import json
import signal
import threading

import pytest

from edge.capture.base import redact_url
from edge.capture.gstreamer import gstreamer_available
from edge.capture.registry import source_config
from edge.capture.stream import open_stream
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, PREFIX, DaemonProcess, sample_folder, write_config
from tests.support.helpers import run_cli

# Each form, with a secret that is unique to it so a leak names the form.
URL_FORMS = {
    "userinfo": "rtsp://admin:UI-s3cret@cam.local:554/live",
    "userinfo with @": "rtsp://admin:p@ss-UA-s3cret@cam.local/live",
    "password=": "rtsp://cam.local/live?password=Q1-s3cret",
    "pwd=": "http://cam.local/video.cgi?user=admin&pwd=Q2-s3cret&res=hd",
    "PASSWD=": "http://cam.local/video.cgi?PASSWD=Q3-s3cret",
    "pass=": "http://cam.local/snap?pass=Q4-s3cret",
    "token=": "https://cam.local/hls?token=Q5-s3cret",
    "access_token=": "https://cam.local/hls?x=1&access_token=Q6-s3cret&y=2",
    "secret=": "rtsp://cam.local/live?secret=Q7-s3cret",
    "api_key=": "http://cam.local/mjpeg?api_key=Q8-s3cret",
    "auth=": "http://cam.local/mjpeg?Auth=Q9-s3cret",
    "user-pw=": "rtsp://cam.local/live?user-pw=Q10-s3cret",
}
PIPELINE_FORMS = {
    "user-pw": "rtspsrc location=rtsp://cam.local/live user-id=admin user-pw=G1-s3cret ! decodebin ! appsink",
    "quoted user-pw": 'rtspsrc location=rtsp://cam.local/live user-pw="G2 s3cret" ! decodebin ! appsink',
    "password": "souphttpsrc location=http://cam.local/m user-id=a password=G3-s3cret ! jpegdec ! appsink",
    "passwd": "somesrc passwd='G4-s3cret' ! appsink",
    "proxy-pw": "rtspsrc location=rtsp://cam.local/live proxy-pw=G5-s3cret ! decodebin ! appsink",
    "location userinfo": "rtspsrc location=rtsp://admin:G6-s3cret@cam.local/live ! decodebin ! appsink",
    "quoted location": "rtspsrc location=\"rtsp://admin:G7-s3cret@cam.local/live?token=G8-s3cret\" ! appsink",
    "single-quoted location": "souphttpsrc location='https://cam.local/m?access_token=G9-s3cret' ! appsink",
}
SECRET_MARK = "s3cret"


@pytest.mark.parametrize("form", URL_FORMS)
def test_every_url_form_is_redacted(form):
    redacted = redact_url(URL_FORMS[form])
    assert SECRET_MARK not in redacted, redacted
    assert "cam.local" in redacted and "***" in redacted


@pytest.mark.parametrize("form", PIPELINE_FORMS)
def test_every_pipeline_form_is_redacted(form):
    redacted = redact_url(PIPELINE_FORMS[form])
    assert SECRET_MARK not in redacted, redacted
    assert redacted.endswith("appsink") and "***" in redacted


def test_redaction_keeps_what_is_not_a_secret():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_url("http://127.0.0.1:8080/stream?res=hd&fps=10") == "http://127.0.0.1:8080/stream?res=hd&fps=10"
    assert redact_url("rtsp://viewer@cam.local/live") == "rtsp://viewer@cam.local/live"
    assert redact_url("cannot open stream http://cam.local/m?token=abc&res=hd: 401") == \
        "cannot open stream http://cam.local/m?token=***&res=hd: 401"
    assert redact_url("rtspsrc location=rtsp://cam.local/live user-id=admin user-pw=x ! appsink") == \
        "rtspsrc location=rtsp://cam.local/live user-id=admin user-pw=*** ! appsink"


def test_a_live_source_reports_and_counts_its_url_redacted(caplog):
    """The grabber's log lines, its state callback and its stats carry no secret of the url."""
    url = (f"rtsp://admin:UI-s3cret@127.0.0.1:{free_port()}/live?password=Q1-s3cret&pwd=Q2-s3cret"
           "&user-pw=Q3-s3cret&token=Q4-s3cret")
    config = source_config(kind="stream", url=url, read_timeout_s=1.0, reconnect_initial_s=0.1, reconnect_max_s=0.2)
    details: list[str] = []
    failed = threading.Event()

    def on_state(state: str, detail: str) -> None:
        details.append(detail)
        failed.set()

    caplog.set_level("INFO")
    source = open_stream(config, False, on_state)
    try:
        assert failed.wait(30), "the stream never reported its failure"
        stats = source.stats()
    finally:
        source.close()
    assert details and stats["last_error"], (details, stats)
    seen = "\n".join([*details, json.dumps(stats), caplog.text])
    assert "cannot open" in seen and "127.0.0.1" in seen
    assert SECRET_MARK not in seen, seen


def test_check_config_and_run_never_echo_a_pipeline_secret(tmp_path):
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer: check-config finds nothing to report about the pipeline")
    pipeline = PIPELINE_FORMS["quoted location"].replace("! appsink", "user-pw=G9-s3cret ! appsink")
    config = write_config(tmp_path, None, sample_folder(tmp_path, 1), source={"kind": "gstreamer", "url": pipeline},
                          mqtt={"enabled": False})
    check = run_cli("check-config", config, timeout=120)
    run = run_cli("run", "--config", config, timeout=120)
    for out in (check, run):
        assert out.returncode == 78, out.stderr
        assert "GStreamer" in out.stderr and "***" in out.stderr
        assert SECRET_MARK not in out.stdout + out.stderr, out.stderr


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_daemon_on_an_unreachable_stream_leaks_no_secret(tmp_path, broker, make_collector, scheme):
    """Journal (the process's whole output), retained state and stats: the url's secrets appear in none."""
    url = (f"{scheme}://admin:UI-s3cret@127.0.0.1:{free_port()}/live?password=Q1-s3cret&PWD=Q2-s3cret"
           "&user-pw=Q3-s3cret&token=Q4-s3cret&api_key=Q5-s3cret&auth=Q6-s3cret&secret=Q7-s3cret")
    everything = make_collector(broker, ["#"])
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, 1), log_level="debug",
                          source={"kind": "stream", "url": url, "read_timeout_s": 1.0,
                                  "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    daemon = DaemonProcess(config)
    failing = lambda m: any(json.loads(p).get("source") == "reconnecting"  # noqa: E731
                            for p in everything.payloads(f"{BASE}/state"))
    stats_error = lambda m: any(json.loads(p)["source"].get("last_error")  # noqa: E731
                                for p in everything.payloads(f"{BASE}/stats"))
    try:
        assert everything.wait_for(failing, 60), daemon.log()[-3000:]
        assert everything.wait_for(stats_error, 30), daemon.log()[-3000:]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()[-3000:]
    log = daemon.log()
    assert "127.0.0.1" in log and "***" in log, log[-3000:]
    assert SECRET_MARK not in log, [line for line in log.splitlines() if SECRET_MARK in line]
    assert everything.messages and all(m.topic.startswith(f"{PREFIX}/") for m in everything.messages)
    leaks = [(m.topic, m.payload) for m in everything.messages if SECRET_MARK.encode() in m.payload]
    assert not leaks
    retained = make_collector(broker, [f"{BASE}/state"])  # what the broker keeps for the next subscriber
    assert retained.wait_for(lambda m: m, 10)
    assert SECRET_MARK.encode() not in retained.messages[0].payload
