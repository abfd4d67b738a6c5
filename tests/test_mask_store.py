"""The stored mask (storage.dir/mask.json): read bounded from a regular file, refused when it is not a mask,
dropped loudly (renamed aside, audited) when it names another model, added to the config's polygons otherwise."""
from __future__ import annotations

import json
import os

import pytest

from edge.commands import CommandRefused, parse_command
from edge.config.load import load_config
from edge.errors import StartupError
from edge.mask_store import MASK_FILE, check_polygons, load_mask, save_mask, StoredMaskError
from edge.publish.messages import model_ref
from edge.startup import build_inspector, drop_threshold
from edge.status import StationStatus
from edge.threshold_audit import read_changes
from tests.support.daemon_harness import write_config

SQUARE = [[10, 10], [20, 10], [20, 20], [10, 20]]


@pytest.fixture
def cfg(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    return load_config(write_config(tmp_path, None, frames, inference={"ignore_polygons": [[[0, 0], [5, 0], [5, 5]]]}))


def test_a_stored_mask_of_the_running_model_adds_to_the_configs_polygons(cfg):
    inspector, _ = build_inspector(cfg)
    save_mask(cfg.storage.dir, [SQUARE], model_ref(inspector.bundle), "test")
    inspector, _ = build_inspector(cfg)
    assert inspector.mask_dropped is None
    assert inspector.stored_polygons == [[(10.0, 10.0), (20.0, 10.0), (20.0, 20.0), (10.0, 20.0)]]
    assert [(0.0, 0.0), (5.0, 0.0), (5.0, 5.0)] in [list(map(tuple, p)) for p in inspector.ignore_polygons]
    assert len(inspector.ignore_polygons) == len(inspector.base_polygons) + 1


def test_another_models_mask_is_dropped_loudly_and_kept_aside(cfg, caplog):
    save_mask(cfg.storage.dir, [SQUARE], {"name": "other", "sha256": "0" * 64}, "test")
    inspector, dropped = build_inspector(cfg)
    assert inspector.stored_polygons == [] and inspector.mask_dropped is not None
    status = StationStatus()
    drop_threshold(dropped, status, inspector)
    assert status.mask_dropped["model"]["sha256"] == "0" * 64
    assert not (cfg.storage.dir / MASK_FILE).exists()
    assert len(list(cfg.storage.dir.glob(f"{MASK_FILE}.dropped-*"))) == 1
    assert "stored mask of 1 polygon(s) was drawn for model other" in caplog.text
    assert read_changes(cfg.storage.dir)[0]["action"] == "mask dropped"


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not a stored mask"),
    (b'{"polygons": [[[1, 2], [3, 4]]]}', "2 points"),
    (b'{"polygons": [[[1, 2], [3, 4], [1e999, 1]]]}', "two finite numbers"),
    (b'{"polygons": "x"}', "must be a list"),
    (json.dumps({"polygons": [SQUARE] * 33}).encode(), "at most 32"),
    (b" " * (300 * 1024), "cannot read"),
])
def test_a_file_that_is_not_a_mask_stops_the_start_naming_it(cfg, content, problem):
    cfg.storage.dir.mkdir(parents=True, exist_ok=True)
    (cfg.storage.dir / MASK_FILE).write_bytes(content)
    with pytest.raises(StoredMaskError, match=problem):
        load_mask(cfg.storage.dir)
    with pytest.raises(StartupError, match=MASK_FILE):
        build_inspector(cfg)


def test_a_fifo_is_refused_without_hanging(cfg):
    cfg.storage.dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(cfg.storage.dir / MASK_FILE)
    with pytest.raises(StoredMaskError, match="cannot read"):
        load_mask(cfg.storage.dir)


def test_polygons_are_checked_with_one_line_reasons():
    assert check_polygons([SQUARE], (30, 30))[0][2] == (20.0, 20.0)
    with pytest.raises(ValueError, match=r"outside the frame \(15 x 15 pixels\)"):
        check_polygons([SQUARE], (15, 15))
    with pytest.raises(ValueError, match="3 to 64"):
        check_polygons([[[0, 0]] * 65])
    with pytest.raises(CommandRefused, match="polygons: .*finite"):
        parse_command("mask", b'{"polygons": [[[0, 0], [1, 1], [true, 2]]]}')
    assert len(parse_command("mask", json.dumps({"polygons": [[[1.5, 2.5]] * 64] * 32}).encode())
               .args.polygons) == 32
