"""Alert debounce and the evidence quota."""
from __future__ import annotations

import numpy as np

from edge.station import AlertDebounce
from edge.publish.evidence import EvidenceStore


def test_single_failure_alerts_by_default():
    debounce = AlertDebounce(1, 1)
    assert [debounce.update(f) for f in (False, True, False, True)] == [False, True, False, True]


def test_two_of_three_failures_alert():
    debounce = AlertDebounce(2, 3)
    verdicts = [True, False, True, True, False, False, True]
    assert [debounce.update(f) for f in verdicts] == [False, False, True, True, False, False, False]


def test_passing_frames_never_alert():
    debounce = AlertDebounce(1, 5)
    assert not any(debounce.update(False) for _ in range(10))


def test_evidence_quota_removes_oldest_first(tmp_path):
    rng = np.random.default_rng(0)
    noisy = lambda: rng.integers(0, 255, (64, 64), dtype=np.uint8)  # noise does not compress: ~4 kB per JPEG
    store = EvidenceStore(tmp_path / "evidence", quota_bytes=20_000)
    for seq in range(12):
        store.save(f"{seq:09d}-part", {"": noisy(), "-heat": noisy()})
    names = sorted(p.name for p in (tmp_path / "evidence").glob("*.jpg"))
    assert store.stats()["bytes"] <= 20_000
    assert names and names[-1] == "000000011-part.jpg"
    assert "000000000-part.jpg" not in names
    assert store.stats()["saved"] == 12 and store.stats()["errors"] == 0


def test_evidence_quota_counts_files_from_before_a_restart(tmp_path):
    rng = np.random.default_rng(1)
    first = EvidenceStore(tmp_path / "evidence", quota_bytes=10**9)
    for seq in range(5):
        first.save(f"{seq:09d}-part", {"": rng.integers(0, 255, (64, 64), dtype=np.uint8)})
    again = EvidenceStore(tmp_path / "evidence", quota_bytes=10**9)
    assert again.stats()["bytes"] == sum(p.stat().st_size for p in (tmp_path / "evidence").glob("*.jpg"))
