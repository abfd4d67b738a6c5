"""The command line protects what is already on disk and refuses bad options in one line, before any work."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import cv2
import numpy as np
import pytest

from edge.capture.gstreamer import gstreamer_available
from edge.core.bundle import publish_dir, staging_dir
from tests.support.broker import strict_json
from tests.support.helpers import LINEGUARD, MNIST_BUNDLE, MNIST_SMALL, ROOT, SAMPLES, run_cli

EX_USAGE = 2
EX_CANTCREAT = 73
EX_CONFIG = 78


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_out_that_is_not_an_earlier_output_is_refused_and_kept(tmp_path, command):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("months of work")
    model_args = ["--model", MNIST_BUNDLE] if command == "evaluate" else []
    result = run_cli(command, *model_args, "--data", MNIST_SMALL, "--out", out)
    assert result.returncode == EX_CANTCREAT, result.stderr[-2000:]
    assert str(out) in last_line(result) and "--force" in last_line(result)
    assert (out / "notes.txt").read_text() == "months of work"
    assert "Traceback" not in result.stderr
    assert "training" not in result.stderr  # refused before any work


def test_evaluate_never_replaces_the_bundle_it_reads(tmp_path):
    bundle = tmp_path / "models" / "mnist-1"
    shutil.copytree(MNIST_BUNDLE, bundle)
    before = sorted(p.name for p in bundle.iterdir())
    for out in (bundle, bundle.parent):
        result = run_cli("evaluate", "--model", bundle, "--data", MNIST_SMALL, "--out", out, "--force")
        assert result.returncode == EX_CANTCREAT, result.stderr[-2000:]
        assert f"--out would replace {bundle}" in last_line(result)
    assert sorted(p.name for p in bundle.iterdir()) == before


def test_evaluate_never_writes_inside_the_bundle_it_reads(tmp_path, monkeypatch):
    bundle = tmp_path / "models" / "mnist-1"
    shutil.copytree(MNIST_BUNDLE, bundle)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    monkeypatch.chdir(bundle)
    for out in (bundle / "report", bundle / "report" / "new", bundle / "elsewhere"):
        result = run_cli("evaluate", "--model", bundle, "--data", MNIST_SMALL, "--out", out, "--force")
        assert result.returncode == EX_CANTCREAT, result.stderr[-2000:]
        assert last_line(result) == (f"lineguard evaluate: {out}: --out is inside {bundle}, which is only read, "
                                     "never written; choose a folder outside it")
        assert "Traceback" not in result.stderr and "scoring" not in result.stderr
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in bundle.parent.iterdir()) == ["mnist-1"]


@pytest.mark.slow
def test_retraining_into_an_earlier_bundle_replaces_it(tmp_path):
    out = tmp_path / "small-1"
    for seed in ("1", "2"):
        result = run_cli("train", "--data", MNIST_SMALL, "--out", out, "--steps", "5", "--seed", seed)
        assert result.returncode == 0, result.stderr[-2000:]
    assert strict_json((out / "model.json").read_text())["name"] == "small-1"
    # A bundle is read by the service account: the umask decides, not the temporary folder's 0700.
    assert stat.S_IMODE(out.stat().st_mode) & 0o055 == 0o055 & ~current_umask()
    assert stat.S_IMODE((out / "model.json").stat().st_mode) & 0o044 == 0o044 & ~current_umask()


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_published_folders_follow_the_umask(tmp_path):
    staged = staging_dir(tmp_path / "bundle")
    (staged / "report").mkdir()
    (staged / "report" / "metrics.json").write_text("{}")
    previous = os.umask(0o022)
    try:
        publish_dir(staged, tmp_path / "bundle")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "bundle" / "report" / "metrics.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("option, value, expected", [
    ("--steps", "0", "argument --steps: 0 is outside [1, inf]"),
    ("--target-frr", "2", "argument --target-frr: 2 is outside (0, 1)"),
    ("--val-fraction", "1", "argument --val-fraction: 1 is outside [0, 1)"),
    ("--augment", "flip,flipp", "argument --augment: unknown flipp; choose from flip, shift, brightness"),
    ("--learning-rate", "-1", "argument --learning-rate: -1 is outside (0, inf]"),
    ("--batch-size", "many", "argument --batch-size: expected a number, got 'many'"),
])
def test_bad_training_options_are_refused_before_loading_anything(tmp_path, option, value, expected):
    out = tmp_path / "x"
    result = run_cli("train", "--data", tmp_path / "not-read", "--out", out, option, value)
    assert result.returncode == EX_USAGE
    assert last_line(result).endswith(expected), last_line(result)
    assert not out.exists()


def test_score_takes_a_folder_and_reports_why_a_frame_is_unscorable(tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(SAMPLES, frames)
    (frames / "notes.txt").write_text("not an image")
    cv2.imwrite(str(frames / "zz-blank.png"), np.zeros((28, 28), np.uint8))  # a lens cap
    result = run_cli("score", "--model", MNIST_BUNDLE, frames)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [strict_json(line) for line in result.stdout.splitlines()]
    assert [line["image"].rsplit("/", 1)[-1] for line in lines] == sorted(p.name for p in frames.glob("*.png"))
    assert lines[-1]["verdict"] == "unscorable" and lines[-1]["reason"].startswith("blank frame")
    assert all("reason" not in line for line in lines[:-1])


def test_score_into_a_closed_pipe_ends_quietly():
    score = subprocess.Popen([*LINEGUARD, "score", "--model", str(MNIST_BUNDLE), *[str(SAMPLES)] * 50],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    score.stdout.readline()
    score.stdout.close()  # as `| head -1` does
    _, stderr = score.communicate(timeout=120)
    assert score.returncode == 0
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr


def test_check_config_finds_what_run_would_refuse(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-bundle'}\nsource:\n  kind: folder\n  path: frames\n")
    result = run_cli("check-config", config)
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{config}:1: model: {tmp_path / 'no-such-bundle'}: no such bundle folder",
                     f"{config}:4: source.path: image folder not found: {tmp_path / 'frames'}"]

    (tmp_path / "frames").mkdir()
    config.write_text(f"model: {MNIST_BUNDLE}\nsource:\n  kind: folder\n  path: frames\n")
    result = run_cli("check-config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}: OK"


def self_signed(folder, name: str) -> tuple:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("case", ["gstreamer", "tls ca", "tls key pair"])
def test_check_config_finds_what_run_would_refuse_in_the_source_and_tls_files(tmp_path, case):
    """Each problem: check-config names it (exit 78) and run refuses to start for the same reason (exit 78)."""
    source = f"source:\n  kind: folder\n  path: {SAMPLES}\n"
    mqtt = "mqtt:\n  port: 1\n"
    if case == "gstreamer":
        if gstreamer_available():
            pytest.skip("this OpenCV build has GStreamer: nothing to refuse")
        source = "source:\n  kind: gstreamer\n  url: videotestsrc ! videoconvert ! appsink\n"
        expected = ("source.kind: gstreamer source 'videotestsrc ! videoconvert ! appsink': "
                    "this OpenCV build has no GStreamer")
    elif case == "tls ca":
        (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        mqtt += "  tls:\n    enabled: true\n    ca_file: ca.pem\n"
        expected = "mqtt.tls: "
    else:
        cert, _ = self_signed(tmp_path, "client")
        _, other_key = self_signed(tmp_path, "other")
        mqtt += f"  tls:\n    enabled: true\n    cert_file: {cert}\n    key_file: {other_key}\n"
        expected = "mqtt.tls: [X509: KEY_VALUES_MISMATCH]"
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {MNIST_BUNDLE}\n{source}{mqtt}storage:\n  dir: {tmp_path / 'state'}\n")

    check = run_cli("check-config", config, env={"LINEGUARD_MQTT_PASSWORD": ""})
    assert check.returncode == EX_CONFIG, check.stderr
    line = {"gstreamer": 3, "tls ca": 7, "tls key pair": 7}[case]  # source.kind, mqtt.tls
    assert last_line(check).startswith(f"{config}:{line}: {expected}"), last_line(check)
    run = run_cli("run", "--config", config, env={"LINEGUARD_MQTT_PASSWORD": ""})
    assert run.returncode == EX_CONFIG, run.stderr[-2000:]
    refusal = last_line(run).partition("cannot start: ")[2]
    assert refusal and last_line(check).endswith(refusal), (last_line(run), last_line(check))


def test_out_given_as_dot_publishes_into_the_current_folder(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    result = subprocess.run([*LINEGUARD, "evaluate", "--model", str(MNIST_BUNDLE), "--data", str(MNIST_SMALL),
                             "--out", "."], cwd=report, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert strict_json((report / "metrics.json").read_text())["model"]["name"] == "mnist-1"
    assert not list(tmp_path.glob(".report*"))  # no staging or backup folder left beside it


def test_out_that_is_a_symbolic_link_is_refused(tmp_path):
    real = tmp_path / "v3"
    real.mkdir()
    (tmp_path / "current").symlink_to(real)
    result = run_cli("evaluate", "--model", MNIST_BUNDLE, "--data", MNIST_SMALL, "--out", tmp_path / "current")
    assert result.returncode == EX_CANTCREAT
    assert "symbolic link" in last_line(result) and (tmp_path / "current").is_symlink()


def test_evaluate_never_replaces_its_data_even_with_force(tmp_path):
    data = tmp_path / "mnist.npz"
    shutil.copy(MNIST_SMALL, data)
    result = run_cli("evaluate", "--model", MNIST_BUNDLE, "--data", data, "--out", tmp_path, "--force")
    assert result.returncode == EX_CANTCREAT and "would replace" in last_line(result)
    assert data.read_bytes() == MNIST_SMALL.read_bytes()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_numbers_must_be_finite(tmp_path, value):
    result = run_cli("train", "--data", MNIST_SMALL, "--out", tmp_path / "x", "--target-frr", value)
    assert result.returncode == EX_USAGE and f"argument --target-frr: {value} is outside" in last_line(result)


def test_check_config_loads_the_password_and_tls_files_as_run_does(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {MNIST_BUNDLE}\nsource:\n  kind: folder\n  path: {SAMPLES}\n"
                      "mqtt:\n  password_file: missing.txt\n  tls:\n    enabled: true\n    ca_file: ca.pem\n")
    result = run_cli("check-config", config, env={"LINEGUARD_MQTT_PASSWORD": ""})
    assert result.returncode == EX_CONFIG
    assert last_line(result) == (f"{config}:6: {tmp_path / 'missing.txt'}: cannot read MQTT password file: "
                                 "No such file or directory")

    (tmp_path / "missing.txt").write_text("secret\n")
    result = run_cli("check-config", config, env={"LINEGUARD_MQTT_PASSWORD": ""})
    assert result.returncode == EX_CONFIG
    assert last_line(result).startswith(f"{config}:7: mqtt.tls: ") and "secret" not in result.stderr
    run = run_cli("run", "--config", config, env={"LINEGUARD_MQTT_PASSWORD": ""})
    assert run.returncode == EX_CONFIG and "mqtt.tls: " in run.stderr


def test_verbose_flag_outranks_the_configured_log_level(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {MNIST_BUNDLE}\nlog_level: warning\nsource:\n  kind: folder\n  path: {SAMPLES}\n"
                      f"mqtt:\n  enabled: false\nstorage:\n  dir: {tmp_path / 'state'}\n")
    quiet = run_cli("run", "--config", config, "--max-frames", "2")
    verbose = run_cli("-v", "run", "--config", config, "--max-frames", "2")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    assert " INFO " not in quiet.stderr and " DEBUG " not in quiet.stderr
    assert " INFO " in verbose.stderr  # debug level: everything down to INFO and below shows
