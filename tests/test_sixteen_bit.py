"""16-bit image files reach the daemon's folder source exactly as they reach `lineguard score`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.support.daemon_harness import BASE, replay_to_end, score_cli, write_config
from tests.support.helpers import SAMPLES

UINT8_TO_UINT16 = 257  # 255 * 257 = 65535: the same brightness at 16 bits
LOW_BYTE_SEED = 16


def write_frames(tmp_path) -> tuple[Path, Path]:
    """The sample frames as 16-bit PNGs whose low byte carries detail, and the same frames cut to 8 bits."""
    deep_folder, shallow_folder = tmp_path / "frames16", tmp_path / "frames8"
    deep_folder.mkdir()
    shallow_folder.mkdir()
    rng = np.random.default_rng(LOW_BYTE_SEED)
    for path in sorted(SAMPLES.glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * UINT8_TO_UINT16
        low_byte = rng.integers(0, 256, image.shape, dtype=np.uint16)
        deep = np.where(image >= 256, image - low_byte, image + low_byte)  # stays within 0..65535
        assert cv2.imwrite(str(deep_folder / path.name), deep)
        assert cv2.imread(str(deep_folder / path.name), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        assert cv2.imwrite(str(shallow_folder / path.name), (deep >> 8).astype(np.uint8))
    return deep_folder, shallow_folder


def test_daemon_scores_16_bit_frames_exactly_as_score_does(tmp_path, broker, make_collector):
    frames, shallow = write_frames(tmp_path)
    collector = make_collector(broker, [f"{BASE}/#"])
    files, got = replay_to_end(write_config(tmp_path, broker.port, frames), collector)
    assert [r["image"] for r in got] == [p.name for p in files]

    expected = score_cli(files)
    for r in got:
        assert r["score"] == expected[r["image"]]["score"]
        assert r["verdict"] == expected[r["image"]]["verdict"]
    failed = [r for r in got if r["verdict"] == "fail"]
    assert failed  # their heatmaps and evidence are drawn from the 16-bit frames too
    assert collector.wait_for(lambda _: len(collector.payloads(f"{BASE}/heatmap")) >= len(failed), 10)
    assert len(collector.payloads(f"{BASE}/heatmap")) == len(failed)
    assert len(list((tmp_path / "state" / "evidence").glob("*-heat.jpg"))) == len(failed)

    # The low byte matters: read as 8-bit, the same frames would score differently.
    truncated = score_cli(sorted(shallow.glob("*.png")))
    assert any(truncated[name]["score"] != expected[name]["score"] for name in expected)


def test_the_trainer_reads_16_bit_files_as_the_device_does(tmp_path):
    """Training data, ground-truth masks and the ignore mask go through the device's reader: the low byte counts."""
    from edge.core.preprocess import PreprocessSpec, preprocess, read_image
    from trainer.data import Sample, image_sizes, load_arrays

    frames, shallow = write_frames(tmp_path)
    deep_files, shallow_files = sorted(frames.glob("*.png")), sorted(shallow.glob("*.png"))
    spec = PreprocessSpec(color="gray", height=28, width=28)
    x = load_arrays([Sample(path.name, path=path) for path in deep_files], spec)
    for got, path in zip(x, deep_files):
        assert np.array_equal(got, preprocess(read_image(path, "gray"), spec))
    assert not np.array_equal(x, load_arrays([Sample(p.name, path=p) for p in shallow_files], spec))
    assert image_sizes(deep_files) == {read_image(deep_files[0], "gray").shape}
    mask_path = tmp_path / "mask.png"
    assert cv2.imwrite(str(mask_path), np.full((28, 28), 40000, np.uint16))  # above half of 16 bits
    assert Sample("bad", label=1, mask_path=mask_path).mask((14, 14)).all()
