"""The shipped systemd unit: hardening score, verify cleanliness, and the directives the daemon relies on.

These tests need ``systemd-analyze`` (Debian package ``systemd``) and fail without it: a unit that
was never checked must not pass CI silently.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.exitcodes import EX_CONFIG, EX_TEMPFAIL

UNIT_PATH = Path(__file__).resolve().parents[1] / "systemd" / "lineguard.service"
TEMPLATE_PATH = UNIT_PATH.with_name("lineguard@.service")  # one daemon per camera: lineguard@NAME
UNITS = pytest.mark.parametrize("unit_path", [UNIT_PATH, TEMPLATE_PATH], ids=["lineguard", "lineguard@"])
# What the template changes from the plain unit: the per-instance paths, and nothing else.
PER_INSTANCE = {
    "Unit.Description": ["lineguard edge visual inspection (%i)"],
    "Service.ExecStart": ["/opt/lineguard/bin/lineguard run --config /etc/lineguard/%i.yaml"],
    "Service.StateDirectory": ["lineguard/%i"],
    "Service.CacheDirectory": ["lineguard/%i"],
    "Service.Environment": ["XDG_CACHE_HOME=%C/lineguard/%i"],
    # each camera's daemon has ports of its own: ten of each server's
    "Service.SocketBindAllow": [
        "tcp:8080-8089", "tcp:9468-9477", "tcp:5020-5029", "tcp:4840-4849", "udp:1024-65535"],
}
MAX_EXPOSURE = 1.3
ANALYZE_TIMEOUT_S = 60
MISSING_EXECUTABLE = "/opt/lineguard/bin/lineguard"
_OVERALL_PATTERN = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


@pytest.fixture(scope="module")
def analyze() -> str:
    """Path of systemd-analyze; fails (never skips) when it is not installed."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install the 'systemd' package to check the unit")
    return path


def run_analyze(analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze without pager or colours; stdout and stderr are captured."""
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [analyze, *args], capture_output=True, text=True, env=env, timeout=ANALYZE_TIMEOUT_S, check=False
    )


def unit_directives(path: Path) -> dict[str, list[str]]:
    """Every ``Section.Key`` assignment in the unit, in order; comments and blank lines skipped."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_directives(UNIT_PATH)


@UNITS
def test_security_exposure_within_budget(analyze: str, unit_path: Path) -> None:
    result = run_analyze(analyze, "security", "--offline=true", "--no-pager", str(unit_path))
    assert result.returncode == 0, result.stderr
    match = _OVERALL_PATTERN.search(result.stdout)
    assert match, f"no overall exposure line in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{result.stdout}"


@UNITS
def test_security_threshold_flag_agrees(analyze: str, unit_path: Path) -> None:
    # --threshold counts in tenths; a non-zero exit means the exposure is above it.
    threshold = str(round(MAX_EXPOSURE * 10))
    result = run_analyze(analyze, "security", "--offline=true", f"--threshold={threshold}", str(unit_path))
    assert result.returncode == 0, result.stdout + result.stderr


@UNITS
def test_verify_only_complains_about_missing_executable(analyze: str, tmp_path: Path, unit_path: Path) -> None:
    # A private copy, so no other file next to the unit is picked up as a drop-in or dependency; the template
    # is checked as an instance of it.
    unit = tmp_path / unit_path.name.replace("@.", "@cam1.")
    shutil.copyfile(unit_path, unit)
    result = run_analyze(analyze, "verify", "--man=no", str(unit))
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [line for line in complaints if MISSING_EXECUTABLE not in line]
    assert unexpected == [], "\n".join(complaints)
    for line in complaints:
        assert "not executable" in line or "No such file" in line, line


def test_notify_and_watchdog(service: dict[str, list[str]]) -> None:
    assert service["Service.Type"] == ["notify"]
    assert service["Service.NotifyAccess"] == ["main"]
    assert service["Service.WatchdogSec"] == ["30s"]
    assert service["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Service.ExecStart"] == [f"{MISSING_EXECUTABLE} run --config /etc/lineguard/config.yaml"]


def test_restart_policy(service: dict[str, list[str]]) -> None:
    # on-failure restarts on every non-zero exit code not listed below, EX_TEMPFAIL among them.
    assert service["Service.Restart"] == ["on-failure"]
    # EX_CONFIG: an invalid config must not crash-loop.
    prevented = service["Service.RestartPreventExitStatus"][0].split()
    assert str(EX_CONFIG) in prevented
    # EX_TEMPFAIL: full or read-only storage at start; the station must come back once the disk does.
    assert str(EX_TEMPFAIL) not in prevented
    assert "Service.SuccessExitStatus" not in service
    delay = service["Service.RestartSec"][0]
    assert delay.endswith("s") and int(delay[:-1]) >= 1, "a delay between attempts, not a tight loop"
    # Stopping waits up to 5 s for the broker's ack of "offline", plus thread joins: leave room before SIGKILL.
    assert service["Service.TimeoutStopSec"][0].endswith("s") and int(service["Service.TimeoutStopSec"][0][:-1]) >= 15


def test_identity_state_and_credentials(service: dict[str, list[str]]) -> None:
    assert service["Service.User"] == ["lineguard"]
    assert service["Service.StateDirectory"] == ["lineguard"]
    assert service["Service.ConfigurationDirectory"] == ["lineguard"]
    assert service["Service.LoadCredential"] == ["mqtt_password:/etc/lineguard/mqtt_password"]
    assert service["Service.SupplementaryGroups"] == ["video"]


def test_devices_are_allow_listed(service: dict[str, list[str]]) -> None:
    assert service["Service.DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in service["Service.DeviceAllow"]}
    assert allowed == {"char-video4linux", "char-media", "char-dma_heap"}
    # PrivateDevices=yes would hide the cameras.
    assert "Service.PrivateDevices" not in service


def test_proc_subset_stays_unset(service: dict[str, list[str]]) -> None:
    # ProcSubset=pid hides /proc/cpuinfo, which XNNPACK's CPU detection reads on arm64.
    assert "Service.ProcSubset" not in service


def megabytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG])", value)
    assert match, f"not a size in K, M or G: {value!r}"
    return int(match.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[match.group(2)]


def test_memory_is_capped_with_headroom_over_the_measured_peak(service: dict[str, list[str]]) -> None:
    # The daemon peaks near 145 MB on 5-megapixel frames and 410 MB on 49-megapixel ones (see the unit).
    maximum = megabytes(service["Service.MemoryMax"][-1])
    high = megabytes(service["Service.MemoryHigh"][-1])
    assert 410 < high < maximum <= 768, (high, maximum)
    assert service["Service.MemorySwapMax"] == ["0"]


def test_the_template_is_the_plain_unit_with_per_instance_paths(service: dict[str, list[str]]) -> None:
    template = unit_directives(TEMPLATE_PATH)
    assert {key: template.get(key) for key in PER_INSTANCE} == PER_INSTANCE
    same = lambda unit: {key: value for key, value in unit.items() if key not in PER_INSTANCE}
    assert same(template) == same(service)  # hardening, restart policy and credentials as in lineguard.service


def test_every_server_may_bind_its_default_port(service: dict[str, list[str]]) -> None:
    from edge.config.schema import Config

    cfg = Config.model_validate({"source": {"path": "frames"}})
    allowed = service["Service.SocketBindAllow"]
    for key, port in (("web.port", cfg.web.port), ("metrics.port", cfg.metrics.port),
                      ("io.modbus.port", cfg.io.modbus.port), ("opcua.port", cfg.opcua.port)):
        assert f"tcp:{port}" in allowed, f"{key} {port} is not in SocketBindAllow"
