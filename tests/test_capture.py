"""Frame sources against real files, a real OpenCV build and real HTTP servers on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from pydantic import ValidationError

from edge.capture import template
from edge.capture.base import CaptureError, Frame, FrameSource
from edge.capture.folder import FolderSource
from edge.capture.gstreamer import gstreamer_available
from edge.capture.kinds import kind_names
from edge.capture.live import LiveSource
from edge.capture.registry import open_source, preflight_source, source_config
from edge.capture.settings import SourceSettings
from edge.config.schema import json_schema
from edge.core.preprocess import read_image
from tests.support import helpers
from tests.support.mjpeg import MjpegServer

FRAME_HEIGHT = 48
FRAME_WIDTH = 64
VIDEO_FRAME_COUNT = 12
VIDEO_LEVEL_STEP = 20
STREAM_FPS = 50.0
WAIT_LIMIT_S = 5.0
POLL_INTERVAL_S = 0.02


def wait_until(condition: Callable[[], bool], limit_s: float = WAIT_LIMIT_S) -> bool:
    return helpers.wait_until(condition, limit_s, POLL_INTERVAL_S)


def read_frame(source: FrameSource, limit_s: float = WAIT_LIMIT_S) -> Frame | None:
    """Keep reading (as the inspector loop does) until a frame comes or limit_s passes."""
    deadline_s = time.monotonic() + limit_s
    while time.monotonic() < deadline_s:
        frame = source.read(timeout_s=0.2)
        if frame is not None:
            return frame
    return None


def capture_counter(frame: Frame | None) -> int:
    """The grabber's capture counter from a live frame name such as "stream#17"; -1 for no frame."""
    return -1 if frame is None else int(frame.name.rsplit("#", 1)[1])


def solid_image(level: int) -> np.ndarray:
    return np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), level % 256, np.uint8)


class StateLog:
    """Collects on_state calls from the grabber thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, state: str, detail: str) -> None:
        self.events.append((state, detail))

    @property
    def states(self) -> list[str]:
        return [state for state, _ in self.events]


# ---------------------------------------------------------------- fixtures


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    # Written out of order so the test sees the source sort them.
    for level, name in ((90, "0003_nine.png"), (10, "0001_one.png"), (50, "0002_five.jpg")):
        assert cv2.imwrite(str(folder / name), solid_image(level))
    (folder / "0002a_broken.png").write_bytes(b"this is not a png")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


@pytest.fixture()
def video_file(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (FRAME_WIDTH, FRAME_HEIGHT))
    assert writer.isOpened()
    for i in range(VIDEO_FRAME_COUNT):
        writer.write(solid_image(i * VIDEO_LEVEL_STEP))
    writer.release()
    return path


@pytest.fixture()
def mjpeg_server():
    server = MjpegServer()
    server.start()
    yield server
    server.stop()


def stream_config(url: str, **overrides) -> SourceSettings:
    values = dict(kind="stream", url=url, reconnect_initial_s=0.1, reconnect_max_s=0.4, read_timeout_s=1.0)
    values.update(overrides)
    return source_config(**values)


@pytest.fixture()
def open_sources():
    """Opens sources and always closes them, so no grabber outlives its test."""
    opened: list[FrameSource] = []

    def opener(config: SourceSettings, on_state=None, grayscale: bool = False) -> FrameSource:
        source = open_source(config, grayscale, on_state)
        opened.append(source)
        return source

    yield opener
    for source in opened:
        source.close()


# ---------------------------------------------------------------- folder


def test_folder_delivers_every_image_sorted_by_name_and_skips_unreadable(image_folder: Path):
    source = open_source(source_config(kind="folder", path=image_folder, fps=0))
    frames = [source.read(timeout_s=1.0) for _ in range(4)]

    assert [f.name for f in frames[:3]] == ["0001_one.png", "0002_five.jpg", "0003_nine.png"]
    assert [f.index for f in frames[:3]] == [0, 1, 2]
    assert [round(float(f.image.mean()) / 10) for f in frames[:3]] == [1, 5, 9]
    assert all(f.image.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and f.image.dtype == np.uint8 for f in frames[:3])
    assert frames[3] is None
    assert source.finite and source.exhausted
    stats = source.stats()
    assert stats["state"] == "ended"
    assert stats["unreadable"] == 1
    assert "0002a_broken.png" in stats["last_error"]
    assert stats["dropped"] == 0


def test_folder_loop_restarts_and_counts_unreadable_each_pass(image_folder: Path):
    source = open_source(source_config(kind="folder", path=image_folder, fps=0, loop=True))
    names = [source.read(timeout_s=1.0).name for _ in range(7)]

    assert names == ["0001_one.png", "0002_five.jpg", "0003_nine.png"] * 2 + ["0001_one.png"]
    assert not source.finite and not source.exhausted
    assert source.stats()["unreadable"] == 2


def test_folder_loop_of_only_unreadable_files_waits_away_instead_of_ending_or_spinning(tmp_path: Path):
    """A loop has no end: a folder where nothing reads is a fault (source away, retried), never exit 0."""
    (tmp_path / "bad.png").write_bytes(b"garbage")
    states: list[tuple[str, str]] = []
    source = open_source(source_config(kind="folder", path=tmp_path, fps=0, loop=True),
                         on_state=lambda state, detail: states.append((state, detail)))

    assert source.read(timeout_s=0.2) is None and source.read(timeout_s=0.2) is None
    assert not source.exhausted
    stats = source.stats()
    assert stats["state"] == "reconnecting" and str(tmp_path) in stats["last_error"] and stats["read_faults"] >= 1
    assert [state for state, _ in states] == ["reconnecting"]  # told once, not once per retry
    assert cv2.imwrite(str(tmp_path / "bad.png"), solid_image(40))  # someone fixes the file
    frame = read_frame(source)
    assert frame is not None and frame.name == "bad.png" and source.stats()["state"] == "running"
    assert states[-1] == ("running", "frames flowing again")


def test_folder_grayscale_reads_single_channel(image_folder: Path):
    source = open_source(source_config(kind="folder", path=image_folder, fps=0), grayscale=True)
    frame = source.read(timeout_s=1.0)

    assert frame.image.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    assert frame.image.dtype == np.uint8


def test_folder_paces_on_a_monotonic_schedule(image_folder: Path):
    fps = 5.0
    source = open_source(source_config(kind="folder", path=image_folder, fps=fps, loop=True))
    first = source.read(timeout_s=1.0)
    # The next slot is 200 ms away: a shorter wait gets nothing, and that is not an error.
    assert source.read(timeout_s=0.001) is None
    frames = [source.read(timeout_s=1.0) for _ in range(5)]

    elapsed_s = frames[-1].arrival_s - first.arrival_s
    assert 5 / fps - 0.005 <= elapsed_s <= 5 / fps + 0.5
    assert [f.index for f in frames] == [1, 2, 3, 4, 5]


def test_folder_pacing_absorbs_work_time_instead_of_adding_it(image_folder: Path):
    fps = 5.0
    work_s = 0.15
    source = open_source(source_config(kind="folder", path=image_folder, fps=fps, loop=True))
    work = threading.Event()
    arrivals_s = []
    for _ in range(6):
        arrivals_s.append(source.read(timeout_s=1.0).arrival_s)
        work.wait(work_s)  # inspection time, shorter than the frame period

    elapsed_s = arrivals_s[-1] - arrivals_s[0]
    sleep_after_work_s = 5 * (1 / fps + work_s)
    assert elapsed_s < 5 / fps + (sleep_after_work_s - 5 / fps) / 2


def test_folder_reports_running_then_end_through_on_state(image_folder: Path):
    log = StateLog()
    source = open_source(source_config(kind="folder", path=image_folder, fps=0), on_state=log)
    assert log.states == []  # nothing flows before the first read
    while source.read(timeout_s=1.0) is not None:
        pass

    assert log.states == ["running", "ended"]


def test_folder_missing_raises_capture_error_and_empty_ends_at_once(tmp_path: Path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(CaptureError, match=str(missing)):
        open_source(source_config(kind="folder", path=missing))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    source = open_source(source_config(kind="folder", path=empty, fps=0))
    assert source.read(0.1) is None and source.exhausted  # an empty replay ends at once


def test_folder_close_interrupts_a_paced_wait(image_folder: Path):
    source = open_source(source_config(kind="folder", path=image_folder, fps=0.2))
    assert source.read(timeout_s=1.0) is not None
    threading.Timer(0.1, source.close).start()

    started_s = time.monotonic()
    assert source.read(timeout_s=5.0) is None
    assert time.monotonic() - started_s < 2.5  # half the 5 s slot: only an interrupted wait ends this soon


# ---------------------------------------------------------------- video


def test_video_delivers_every_frame_in_order(video_file: Path):
    source = open_source(source_config(kind="video", path=video_file, fps=0))
    frames = []
    while (frame := source.read(timeout_s=1.0)) is not None:
        frames.append(frame)

    assert [f.name for f in frames] == [f"clip.avi#{i}" for i in range(VIDEO_FRAME_COUNT)]
    assert [f.index for f in frames] == list(range(VIDEO_FRAME_COUNT))
    levels = [float(f.image.mean()) for f in frames]
    assert levels == pytest.approx([i * VIDEO_LEVEL_STEP for i in range(VIDEO_FRAME_COUNT)], abs=3)
    assert source.exhausted and source.stats()["state"] == "ended"
    source.close()


def test_video_loop_starts_again_from_the_first_frame(video_file: Path):
    source = open_source(source_config(kind="video", path=video_file, fps=0, loop=True), grayscale=True)
    frames = [source.read(timeout_s=1.0) for _ in range(VIDEO_FRAME_COUNT + 3)]
    source.close()

    assert [f.name for f in frames[VIDEO_FRAME_COUNT:]] == ["clip.avi#0", "clip.avi#1", "clip.avi#2"]
    assert frames[-1].index == VIDEO_FRAME_COUNT + 2
    assert frames[VIDEO_FRAME_COUNT].image.ndim == 2
    assert not source.exhausted
    assert source.read(timeout_s=0.1) is None  # closed


def test_video_loop_waits_away_while_the_file_is_gone_and_resumes(video_file: Path):
    source = open_source(source_config(kind="video", path=video_file, fps=0, loop=True))
    for _ in range(VIDEO_FRAME_COUNT):
        assert source.read(timeout_s=1.0) is not None
    kept = video_file.read_bytes()
    video_file.unlink()

    assert source.read(timeout_s=0.2) is None
    assert not source.exhausted  # a loop that lost its file has not reached an end
    assert source.stats()["state"] == "reconnecting" and str(video_file) in source.stats()["last_error"]
    video_file.write_bytes(kept)
    frame = read_frame(source)
    assert frame is not None and frame.name == "clip.avi#0"
    source.close()


def test_video_missing_file_raises_capture_error_naming_the_path(tmp_path: Path):
    missing = tmp_path / "gone.avi"
    with pytest.raises(CaptureError, match=str(missing)):
        open_source(source_config(kind="video", path=missing))


def test_video_that_cannot_be_decoded_raises_capture_error(tmp_path: Path):
    not_video = tmp_path / "fake.avi"
    not_video.write_bytes(b"definitely not a video container")
    with pytest.raises(CaptureError, match=str(not_video)):
        open_source(source_config(kind="video", path=not_video))


# ---------------------------------------------------------------- live stream over HTTP


def test_stream_delivers_live_frames(mjpeg_server: MjpegServer, open_sources):
    source = open_sources(stream_config(mjpeg_server.url))
    frames = [read_frame(source) for _ in range(3)]

    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.name.startswith("stream#") for f in frames)
    assert frames[0].image.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert frames[0].arrival_s < frames[1].arrival_s < frames[2].arrival_s
    assert not source.finite and not source.exhausted
    assert source.stats()["state"] == "running"


def test_stream_latest_frame_wins_and_counts_drops(mjpeg_server: MjpegServer, open_sources):
    source = open_sources(stream_config(mjpeg_server.url), grayscale=True)
    first = read_frame(source)
    threading.Event().wait(0.3)  # a slow inspection step
    second = read_frame(source)

    skipped = capture_counter(second) - capture_counter(first) - 1
    assert skipped >= 3
    assert source.stats()["dropped"] >= skipped
    assert second.index == first.index + 1
    assert second.image.ndim == 2


def test_stream_reconnects_when_the_server_goes_away_and_comes_back(mjpeg_server: MjpegServer, open_sources):
    log = StateLog()
    source = open_sources(stream_config(mjpeg_server.url), on_state=log)
    assert read_frame(source) is not None

    mjpeg_server.stop()
    assert wait_until(lambda: "reconnecting" in log.states)
    source.read(timeout_s=0.2)  # may still hand over the last frame captured before the drop
    assert source.read(timeout_s=0.3) is None
    assert wait_until(lambda: source.stats()["reconnects"] >= 1)
    stats = source.stats()
    assert stats["state"] == "reconnecting"
    assert stats["last_error"]

    mjpeg_server.start()  # same port
    assert read_frame(source) is not None
    assert log.states[-1] == "running"
    assert source.stats()["state"] == "running"


def test_stream_stall_without_data_is_detected_and_recovered(mjpeg_server: MjpegServer, open_sources):
    log = StateLog()
    source = open_sources(stream_config(mjpeg_server.url, read_timeout_s=0.5), on_state=log)
    assert read_frame(source) is not None

    mjpeg_server.paused.set()  # connection stays open, no bytes flow
    assert wait_until(lambda: "reconnecting" in log.states)
    assert "stalled" in log.events[log.states.index("reconnecting")][1]

    mjpeg_server.paused.clear()
    source.read(timeout_s=0.1)
    assert wait_until(lambda: log.states[-1] == "running")
    assert read_frame(source) is not None


def test_stream_of_a_served_video_file_treats_its_end_as_a_failure(video_file: Path, open_sources):
    handler = functools.partial(SilentFileHandler, directory=str(video_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL_S,), name="file-server", daemon=True).start()
    try:
        log = StateLog()
        url = f"http://127.0.0.1:{server.server_address[1]}/{video_file.name}"
        source = open_sources(stream_config(url), on_state=log)
        assert read_frame(source) is not None
        assert wait_until(lambda: source.stats()["reconnects"] >= 1)

        # Frames counted past the file's length can only come from a later connection.
        assert wait_until(lambda: capture_counter(read_frame(source, 0.5)) >= VIDEO_FRAME_COUNT)
        # The first frames are reported too: the station says "starting" until then.
        assert log.states[:3] == ["running", "reconnecting", "running"]
        assert "ended" in log.events[1][1]
    finally:
        server.shutdown()
        server.server_close()


class SilentFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_stream_close_stops_the_grabber_promptly(mjpeg_server: MjpegServer, open_sources):
    source = open_sources(stream_config(mjpeg_server.url))
    assert read_frame(source) is not None

    started_s = time.monotonic()
    source.close()
    assert time.monotonic() - started_s < 2.0
    assert not source.grabber_alive
    assert source.read(timeout_s=0.1) is None


def test_close_during_backoff_is_immediate(mjpeg_server: MjpegServer, open_sources):
    log = StateLog()
    source = open_sources(stream_config(mjpeg_server.url, reconnect_initial_s=30.0, reconnect_max_s=30.0), on_state=log)
    assert read_frame(source) is not None
    mjpeg_server.stop()
    assert wait_until(lambda: "reconnecting" in log.states)

    started_s = time.monotonic()
    source.close()
    assert time.monotonic() - started_s < 2.0  # against a 30 s backoff
    assert not source.grabber_alive


def test_close_during_a_stalled_read_is_bounded_by_read_timeout(mjpeg_server: MjpegServer, open_sources):
    read_timeout_s = 2.0
    source = open_sources(stream_config(mjpeg_server.url, read_timeout_s=read_timeout_s))
    newest = [capture_counter(read_frame(source))]
    assert newest[0] >= 0
    mjpeg_server.paused.set()
    assert mjpeg_server.stalled.wait(WAIT_LIMIT_S)
    last_sent = mjpeg_server.sent - 1

    def took_the_last_frame() -> bool:
        newest.append(capture_counter(source.read(timeout_s=0.1)))
        return max(newest) >= last_sent

    # Once the grabber has the last frame sent, its next read finds no data and blocks in the driver.
    assert wait_until(took_the_last_frame), (max(newest), last_sent)

    started_s = time.monotonic()
    source.close()
    assert time.monotonic() - started_s < read_timeout_s + 1.5
    assert not source.grabber_alive


# ---------------------------------------------------------------- reconnect policy, cameras, errors


def test_backoff_doubles_to_the_cap_and_resets_after_frames(video_file: Path, caplog: pytest.LogCaptureFixture):
    """Drives the grabber with a real capture that fails to open, then one that plays a file.

    The backoff chosen before each reopen is read from the grabber's own log line; the clock only confirms
    that it waited at least that long (a loaded machine can only make the gaps longer).
    """
    script = ["fail", "fail", "fail", "fail", "play", "fail", "fail"]
    open_times_s: list[float] = []
    all_opened = threading.Event()

    def scripted_opener() -> cv2.VideoCapture:
        open_times_s.append(time.monotonic())
        step = script[min(len(open_times_s), len(script)) - 1]
        if len(open_times_s) >= len(script):
            all_opened.set()
        return cv2.VideoCapture(str(video_file)) if step == "play" else cv2.VideoCapture()

    config = source_config(kind="stream", url="rtsp://scripted.invalid/", reconnect_initial_s=0.4, reconnect_max_s=1.2)
    caplog.set_level(logging.WARNING, logger="edge.capture.live")
    source = LiveSource(config, scripted_opener)
    try:
        assert all_opened.wait(4 * WAIT_LIMIT_S)  # the gaps add up to 4.8 s
    finally:
        source.close()

    # fail->fail: 0.4, 0.8, 1.2 (capped), 1.2; play: frames came, so back to 0.4, then 0.8.
    expected_s = [0.4, 0.8, 1.2, 1.2, 0.4, 0.8]
    announced_s = [float(match) for record in caplog.records
                   for match in re.findall(r"reopening in (\d+\.\d) s", record.getMessage())]
    assert announced_s[: len(expected_s)] == expected_s
    gaps_s = np.diff(open_times_s[: len(script)])
    for gap_s, want_s in zip(gaps_s, expected_s):
        assert gap_s >= want_s - 0.01
    assert source.stats()["reconnects"] >= len(script) - 1


def test_missing_camera_keeps_reconnecting_without_raising(open_sources):
    log = StateLog()
    config = source_config(kind="camera", index=63, reconnect_initial_s=0.05, reconnect_max_s=0.1)
    source = open_sources(config, on_state=log)

    assert source.read(timeout_s=0.3) is None
    assert wait_until(lambda: source.stats()["reconnects"] >= 2)
    assert log.states == ["reconnecting"]
    assert "/dev/video63" in log.events[0][1]
    assert source.stats()["state"] == "reconnecting"


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV build has GStreamer")
def test_gstreamer_without_support_raises_a_clear_capture_error():
    pipeline = "videotestsrc ! videoconvert ! appsink"
    with pytest.raises(CaptureError) as caught:
        open_source(source_config(kind="gstreamer", url=pipeline))

    message = str(caught.value)
    assert "GStreamer" in message and "python3-opencv" in message and pipeline in message
    assert "\n" not in message
    # check-config finds the same problem without opening anything
    assert preflight_source(source_config(kind="gstreamer", url=pipeline)) == [f"source.kind: {message}"]


def test_configuration_that_can_never_work_is_refused():
    with pytest.raises(CaptureError, match="unknown source kind 'webcam'"):
        source_config(kind="webcam")
    with pytest.raises(ValidationError, match="url"):
        source_config(kind="stream")



def test_sources_satisfy_the_frame_source_protocol(image_folder: Path):
    assert isinstance(FolderSource(source_config(kind="folder", path=image_folder)), FrameSource)


# ---------------------------------------------------------------- registry, preflight, template, depth


def test_config_accepts_exactly_the_registered_kinds():
    source = json_schema()["properties"]["source"]
    assert set(source["discriminator"]["mapping"]) == set(kind_names()) == {
        "folder", "video", "camera", "stream", "gstreamer"}


def test_preflight_finds_a_missing_folder_or_video_as_opening_would(tmp_path: Path, image_folder: Path):
    assert preflight_source(source_config(kind="folder", path=image_folder)) == []
    assert preflight_source(source_config(kind="camera", index=63)) == []  # a camera may come later
    missing = tmp_path / "gone"
    for kind, what in (("folder", "image folder"), ("video", "video file")):
        assert preflight_source(source_config(kind=kind, path=missing)) == [f"source.path: {what} not found: {missing}"]
        with pytest.raises(CaptureError, match=f"{what} not found: {missing}"):
            open_source(source_config(kind=kind, path=missing))


def test_template_source_delivers_its_image_once_or_in_a_loop(image_folder: Path):
    image = image_folder / "0001_one.png"
    once = template.open_still(template.StillConfig(path=image, fps=0), True, None)
    frame = once.read(timeout_s=1.0)
    assert frame.name == "0001_one.png" and frame.image.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    assert once.read(timeout_s=1.0) is None and once.exhausted
    looped = template.open_still(template.StillConfig(path=image, fps=0, loop=True), False, None)
    assert [looped.read(timeout_s=1.0).index for _ in range(3)] == [0, 1, 2]
    assert isinstance(looped, FrameSource)
    assert template.still_problems(template.StillConfig(path=image_folder / "none.png")) == [
        ("path", f"image file not found: {image_folder / 'none.png'}")]


@pytest.mark.parametrize("grayscale", [True, False])
def test_folder_keeps_16_bit_depth_as_score_reads_it(tmp_path: Path, grayscale: bool):
    shape = (FRAME_HEIGHT, FRAME_WIDTH) if grayscale else (FRAME_HEIGHT, FRAME_WIDTH, 3)
    deep = np.random.default_rng(7).integers(0, 65536, shape, dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep)
    frame = open_source(source_config(kind="folder", path=tmp_path, fps=0), grayscale).read(timeout_s=1.0)

    assert frame.image.dtype == np.uint16
    expected = read_image(tmp_path / "deep.png", "gray" if grayscale else "bgr")
    assert np.array_equal(frame.image, expected)
    assert np.array_equal(expected, deep)
