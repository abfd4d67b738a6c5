"""A capture source added the way edge/capture/template.py says: one module (here, this file) with its own
settings class, an opener and a registration line. The config selects it, and the daemon runs it end to end."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, field_validator

from edge.capture.base import STATE_ENDED, STATE_RUNNING, Frame, StateCallback, notify
from edge.capture.kinds import SourceKind, kind_names, register, unregister
from edge.capture.registry import open_source, preflight_source
from edge.capture.settings import SourceSettings
from edge.config.errors import ConfigError
from edge.config.fields import FilePath, resolve
from edge.config.load import parse_config
from edge.core.preprocess import read_image
from tests.support.daemon_harness import BASE, LoggedProcess, results, score_cli, unique_in_order, write_config
from tests.support.helpers import SAMPLES, run_cli

TOY = "tiles"


class TilesConfig(SourceSettings):
    """source.kind tiles: one image file, delivered ``count`` times; settings no built-in kind has."""

    kind: Literal["tiles"] = Field("tiles", description="One image file as a run of frames.")
    image: FilePath = Field(description="The image every frame shows.")
    count: int = Field(3, gt=0, le=1000, strict=True, description="How many frames the run has.")

    @field_validator("image")
    @classmethod
    def _resolve_image(cls, value: Path, info) -> Path:
        return resolve(value, info)


class TilesSource:
    """The same image ``count`` times, named tile-0.png, tile-1.png, ...; then the run has ended."""

    finite = True

    def __init__(self, config: TilesConfig, grayscale: bool, on_state: StateCallback | None) -> None:
        self._image = read_image(config.image, "gray" if grayscale else "bgr")
        self._count = config.count
        self._on_state = on_state
        self._delivered = 0

    def read(self, timeout_s: float) -> Frame | None:
        if self._delivered >= self._count:
            return None
        if self._delivered == 0:
            notify(self._on_state, STATE_RUNNING, "frames flowing")
        frame = Frame(self._image, f"tile-{self._delivered}.png", self._delivered, time.monotonic())
        self._delivered += 1
        if self._delivered == self._count:
            notify(self._on_state, STATE_ENDED, f"{self._count} frames delivered")
        return frame

    @property
    def exhausted(self) -> bool:
        return self._delivered >= self._count

    def stats(self) -> dict:
        return {"state": STATE_ENDED if self.exhausted else STATE_RUNNING, "dropped": 0, "reconnects": 0,
                "unreadable": 0, "last_error": None}

    def close(self) -> None:
        self._count = self._delivered


def tiles_problems(config: TilesConfig) -> list[tuple[str, str]]:
    return [] if config.image.is_file() else [("image", f"image file not found: {config.image}")]


def register_toy_kind() -> SourceKind:
    """The registration line a kind's module ends with."""
    return register(SourceKind(config=TilesConfig, opener=TilesSource, problems=tiles_problems))


# What `lineguard` runs as in the subprocess: the toy kind registered, then the real command line.
RUN_WITH_TOY_KIND = (
    "import sys\n"
    "from tests.test_templates_source import register_toy_kind\n"
    "register_toy_kind()\n"
    "from edge.cli import main\n"
    "sys.exit(main())\n"
)


@pytest.fixture()
def toy_kind():
    kind = register_toy_kind()
    yield kind
    unregister(TOY)


def sample_image() -> Path:
    return sorted(SAMPLES.glob("*.png"))[0]


def test_a_registered_kind_is_accepted_with_its_own_keys_checked_with_line_numbers(toy_kind, tmp_path):
    image = sample_image()
    config = parse_config(f"source:\n  kind: tiles\n  image: {image}\n  count: 4\n", base_dir=tmp_path)
    assert isinstance(config.source, TilesConfig) and config.source.count == 4 and TOY in kind_names()
    assert preflight_source(config.source) == []
    source = open_source(config.source, grayscale=True)
    assert [source.read(1.0).name for _ in range(4)] == [f"tile-{n}.png" for n in range(4)]
    assert source.read(1.0) is None and source.exhausted

    with pytest.raises(ConfigError) as refused:
        parse_config("source:\n  kind: tiles\n  count: 0\n  path: frames\n")
    assert refused.value.errors == [
        "config.yaml:1: source.image: is required",
        "config.yaml:3: source.count: must be > 0, got 0",
        "config.yaml:4: source.path: unknown key 'path' for source.kind tiles: only kinds folder, video take it",
    ]
    missing = parse_config("source: {kind: tiles, image: gone.png}", base_dir=tmp_path).source
    assert preflight_source(missing) == [f"source.image: image file not found: {tmp_path / 'gone.png'}"]


def test_a_withdrawn_or_unknown_kind_is_refused_in_one_line_with_its_line_number(tmp_path):
    kind = register_toy_kind()
    unregister(kind.name)
    with pytest.raises(ConfigError) as refused:
        parse_config(f"device_id: cell-7\nsource:\n  kind: tiles\n  image: {sample_image()}\n")
    assert refused.value.errors == [
        "config.yaml:3: source.kind: must be one of 'camera', 'folder', 'gstreamer', 'stream', 'video', got 'tiles'"]

    config = tmp_path / "config.yaml"
    config.write_text("model: models/mnist-1\nsource:\n  kind: webcam\n  index: 0\n", encoding="utf-8")
    out = run_cli("check-config", config, timeout=120)
    assert out.returncode == 78, out.stderr
    assert out.stderr.splitlines() == [
        f"{config}:3: source.kind: must be one of 'camera', 'folder', 'gstreamer', 'stream', 'video', got 'webcam'"]


def test_the_daemon_runs_a_registered_kind_end_to_end_as_score_would(tmp_path, broker, make_collector):
    image, count = sample_image(), 5
    config = write_config(tmp_path, broker.port, tmp_path, source={"kind": TOY, "image": str(image), "count": count})
    collector = make_collector(broker, [f"{BASE}/#"])

    check = LoggedProcess(RUN_WITH_TOY_KIND, ["check-config", str(config)], tmp_path / "check.log")
    assert check.wait(120) == 0, check.log()[-3000:]
    daemon = LoggedProcess(RUN_WITH_TOY_KIND, ["run", "--config", str(config)], tmp_path / "daemon.log")
    assert daemon.wait(120) == 0, daemon.log()[-3000:]
    assert collector.wait_for(lambda m: sum(x.topic == f"{BASE}/result" for x in m) >= count, 10)

    got = unique_in_order(results(collector))
    assert [r["image"] for r in got] == [f"tile-{n}.png" for n in range(count)]
    expected = score_cli([image])[image.name]
    assert {(r["score"], r["verdict"]) for r in got} == {(expected["score"], expected["verdict"])}
    assert f"source {TOY}," in daemon.log()
    assert TOY not in kind_names()  # the subprocess registered it, not this one
