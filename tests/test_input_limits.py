"""Decompression bombs and unbounded reads: every input is bounded before it is read or decoded.

Images are checked from their header (at most MAX_IMAGE_PIXELS) before decoding; config, model.json and
images must be regular files within a size limit. Real files, FIFOs and devices, real processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import MAX_IMAGE_PIXELS
from edge.capture.folder import FolderSource
from edge.capture.registry import source_config
from edge.core.preprocess import MAX_IMAGE_FILE_BYTES, ImageError, image_size, read_image
from edge.exitcodes import EX_CONFIG, EX_DATAERR
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import LINEGUARD, MNIST_BUNDLE, ROOT, SAMPLES, run_cli

BOMB_SIDE = 20000  # 400 megapixels in a file of about 389 KB
# `score` on the bomb peaked at 850 MB before the header check; with it, as on any small image, under 200 MB.
SCORE_PEAK_RSS_LIMIT_KB = 300 * 1024
CLI_TIMEOUT_S = 120  # a hang on a FIFO would otherwise be forever


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A valid, all-black 20000x20000 gray PNG, compressed to a few hundred kilobytes."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (BOMB_SIDE + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(BOMB_SIDE)) + compressor.flush()
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE,
                                                                          8, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    assert path.stat().st_size < 1024 * 1024
    return path


# Linux keeps a process's peak RSS across exec, and a child forked from this (large) test process starts with
# this process's RSS: so the command is started by a small fresh Python, and that one reports its peak.
MEASURE_PEAK = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def run_measured(*args: str) -> tuple[int, str, int]:
    """Run `lineguard ARGS`; its exit code, stderr and peak resident memory in KB (from wait4)."""
    out = subprocess.run([sys.executable, "-c", MEASURE_PEAK, *LINEGUARD, *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    code, peak_kb = (int(v) for v in out.stdout.split())
    return code, out.stderr, peak_kb


def problem_lines(stderr: str) -> list[str]:
    """stderr without the runtime's and logging's lines: what the command itself said."""
    return [line for line in stderr.splitlines() if line.startswith("lineguard ")]


# ---------------------------------------------------------------- pixel limit, from the header


def test_score_refuses_a_decompression_bomb_in_one_line_without_decoding_it(bomb):
    code, stderr, peak_kb = run_measured("score", "--model", MNIST_BUNDLE, bomb)
    assert code == EX_DATAERR, stderr[-2000:]
    assert problem_lines(stderr) == [f"lineguard score: {bomb}: {BOMB_SIDE}x{BOMB_SIDE} pixels is above the "
                                     f"limit of {MAX_IMAGE_PIXELS:,} pixels; not decoded"]
    assert "Traceback" not in stderr
    assert peak_kb < SCORE_PEAK_RSS_LIMIT_KB, f"score peaked at {peak_kb // 1024} MB"


OVER_WIDTH, OVER_HEIGHT = 7072, 7071  # 50.006 megapixels, just above the limit


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif", ".pgm", ".webp"])
def test_every_format_is_refused_above_the_pixel_limit_and_read_below_it(tmp_path, suffix):
    assert OVER_WIDTH * OVER_HEIGHT > MAX_IMAGE_PIXELS > OVER_WIDTH * (OVER_HEIGHT - 1)
    big = tmp_path / f"big{suffix}"
    params = [cv2.IMWRITE_WEBP_QUALITY, 1] if suffix == ".webp" else []
    assert cv2.imwrite(str(big), np.zeros((OVER_HEIGHT, OVER_WIDTH), np.uint8), params)
    with pytest.raises(ImageError, match=rf"{OVER_WIDTH}x{OVER_HEIGHT} pixels is above the limit"):
        read_image(big, "gray")
    small = tmp_path / f"small{suffix}"
    assert cv2.imwrite(str(small), np.full((30, 41), 128, np.uint8))
    assert read_image(small, "gray").shape == (30, 41)


@pytest.mark.parametrize("suffix, params", [
    (".png", []), (".png", ["uint16"]), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []),
    (".tif", []), (".tif", ["uint16"]), (".pgm", []), (".ppm", []), (".pbm", []), (".pam", []), (".pfm", []),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 60]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
])
def test_the_header_size_is_the_decoded_size(suffix, params):
    rng = np.random.default_rng(7)
    for height, width in ((1, 1), (17, 33), (300, 41)):
        image = rng.integers(0, 255, (height, width, 3), np.uint8)
        if params == ["uint16"]:
            image, params = image.astype(np.uint16) * 257, []
        if suffix in (".pgm", ".pbm"):
            image = image[..., 0]
        if suffix == ".pfm":
            image = image.astype(np.float32) / 255
        ok, encoded = cv2.imencode(suffix, image, params)
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        assert image_size(encoded.tobytes()) == (decoded.shape[1], decoded.shape[0]) == (width, height)


def test_content_that_is_no_supported_image_is_refused_before_decoding(tmp_path):
    for name, content in {"text.png": b"not an image", "empty.png": b"", "gif.png": b"GIF89a\x10\x00\x10\x00",
                          "truncated.png": b"\x89PNG\r\n\x1a\n\0\0\0\x0dIH"}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match=rf"{name}: not a readable image"):
            read_image(tmp_path / name, "gray")


def test_a_folder_source_counts_a_bomb_as_unreadable_and_never_delivers_it(tmp_path, bomb):
    frames = sample_folder(tmp_path, 3)
    shutil.copy(bomb, frames / "001-bomb.png")
    source = FolderSource(source_config(kind="folder", path=frames, fps=0), grayscale=True)
    names = []
    while (frame := source.read(5)) is not None:
        names.append(frame.name)
    assert source.exhausted and "001-bomb.png" not in names and len(names) == 3
    assert source.stats()["unreadable"] == 1
    assert "pixels is above the limit" in source.stats()["last_error"]


def test_a_daemon_gives_a_bomb_frame_no_verdict_and_counts_it(tmp_path, bomb, broker, make_collector):
    frames = sample_folder(tmp_path, 3)
    shutil.copy(bomb, frames / "001-bomb.png")
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(write_config(tmp_path, broker.port, frames, source={"loop": True, "fps": 5}))
    stats = lambda: [json.loads(p) for p in collector.payloads(f"{BASE}/stats")]  # noqa: E731
    try:
        assert collector.wait_for(lambda _: any(s["source"].get("unreadable", 0) >= 1 for s in stats()), 60), \
            daemon.log()[-3000:]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()[-3000:]
    names = {json.loads(p)["image"] for p in collector.payloads(f"{BASE}/result")}
    assert names and "001-bomb.png" not in names
    log = daemon.log()
    assert "001-bomb.png: 20000x20000 pixels is above the limit" in log and "Traceback" not in log


# ---------------------------------------------------------------- regular files within a size limit


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


def test_check_config_and_run_refuse_a_device_a_fifo_and_a_folder_at_once(tmp_path, fifo):
    for path, why in ((Path("/dev/zero"), "a device, not a regular file"),
                      (fifo, "a named pipe (FIFO), not a regular file"), (tmp_path, "a folder, not a file")):
        for args in (("check-config", path), ("run", "--config", path)):
            result = run_cli(*args, timeout=CLI_TIMEOUT_S)
            assert result.returncode == EX_CONFIG, result.stderr[-2000:]
            assert result.stderr.strip().splitlines()[-1] == f"{path}: cannot read config file: {why}"
            assert "Traceback" not in result.stderr


def test_a_config_file_above_the_limit_is_refused_unread(tmp_path):
    config = tmp_path / "config.yaml"
    with open(config, "wb") as handle:
        handle.truncate(2 * 1024 * 1024)  # sparse: larger than any config, and never read
    result = run_cli("check-config", config)
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip() == f"{config}: cannot read config file: 2,097,152 bytes, above the limit of 1,048,576"


def bundle_copy(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(MNIST_BUNDLE, bundle)
    return bundle


@pytest.mark.parametrize("manifest", ["fifo", "device", "huge"])
def test_a_model_json_that_is_no_regular_file_or_too_large_is_refused(tmp_path, manifest):
    bundle = bundle_copy(tmp_path)
    path = bundle / "model.json"
    path.unlink()
    if manifest == "fifo":
        os.mkfifo(path)
    elif manifest == "device":
        path.symlink_to("/dev/zero")
    else:
        path.write_text(json.dumps({"format": "lineguard-bundle", "pad": " " * (5 * 1024 * 1024)}))
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {bundle}\nsource:\n  kind: folder\n  path: {SAMPLES}\n")
    check = run_cli("check-config", config, timeout=CLI_TIMEOUT_S)
    score = run_cli("score", "--model", bundle, SAMPLES, timeout=CLI_TIMEOUT_S)
    for result in (check, score):
        assert result.returncode == EX_CONFIG, result.stderr[-2000:]
        assert f"{path}: cannot read: " in result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr


def test_score_refuses_image_files_that_are_no_regular_files_or_too_large(tmp_path, fifo):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_IMAGE_FILE_BYTES + 1)
    device = tmp_path / "zero.png"
    device.symlink_to("/dev/zero")
    result = run_cli("score", "--model", MNIST_BUNDLE, fifo, device, huge, timeout=CLI_TIMEOUT_S)
    assert result.returncode == EX_DATAERR
    assert problem_lines(result.stderr) == [
        f"lineguard score: {fifo}: a named pipe (FIFO), not a regular file",
        f"lineguard score: {device}: a device, not a regular file",
        f"lineguard score: {huge}: {MAX_IMAGE_FILE_BYTES + 1:,} bytes, above the limit of {MAX_IMAGE_FILE_BYTES:,}",
    ]


def test_opencv_itself_refuses_the_bomb_once_lineguard_is_imported(bomb):
    """The second guard: OpenCV's own pixel limit, set before any lineguard module loads cv2."""
    code = ("import sys, numpy as np, edge.core.inspector, cv2\n"
            "try:\n    image = cv2.imdecode(np.fromfile(sys.argv[1], np.uint8), cv2.IMREAD_GRAYSCALE)\n"
            "except cv2.error as exc:\n    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(exc) else exc)\n"
            "else:\n    print('decoded', image.shape)\n")
    env = {key: value for key, value in os.environ.items() if key != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=CLI_TIMEOUT_S)
    assert result.stdout.strip() == "refused", result.stdout + result.stderr[-2000:]


def test_the_trainer_refuses_a_bomb_as_score_does_without_decoding_it(tmp_path, bomb):
    from trainer.data import DataError, load_dataset

    good = tmp_path / "data" / "train" / "good"
    shutil.copytree(SAMPLES, good)
    shutil.copy(bomb, good / "zz-bomb.png")
    with pytest.raises(DataError) as refused:
        load_dataset(tmp_path / "data")
    assert str(refused.value) == (f"{good / 'zz-bomb.png'}: {BOMB_SIDE}x{BOMB_SIDE} pixels is above the limit of "
                                  f"{MAX_IMAGE_PIXELS:,} pixels; not decoded")
