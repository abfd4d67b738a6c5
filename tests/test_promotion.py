"""promote and rollback on a real daemon and broker: the shadow candidate becomes the live model through the
reload path, stays live across a restart, is audited, and rollback brings the earlier model back."""
from __future__ import annotations

import json
import signal

from edge.exitcodes import EX_DATAERR
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import run_cli
from tests.test_shadow import SHADOW_THRESHOLD, bundle_with_threshold


def test_promote_makes_the_shadow_live_and_rollback_brings_the_old_model_back(tmp_path, broker, make_collector):
    candidate = bundle_with_threshold(tmp_path / "candidate", SHADOW_THRESHOLD)
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 20, "loop": True},
                          web={"enabled": True, "port": free_port()})
    collector = make_collector(broker, [f"{BASE}/result"])
    thresholds = lambda: [r["threshold"] for r in results(collector)]  # noqa: E731
    live_from_now = lambda value: collector.wait_for(  # noqa: E731
        lambda _: (lambda seen: seen.count(value) >= 3)(thresholds()[mark[0]:]), 30)
    mark = [0]
    daemon = DaemonProcess(config)
    try:
        assert collector.wait_for(3, 30), daemon.log()[-3000:]
        bundle_threshold = thresholds()[0]
        nothing = run_cli("promote", "--config", config)
        assert nothing.returncode == EX_DATAERR and "no shadow model to promote" in nothing.stderr
        assert run_cli("shadow", "--config", config, candidate).returncode == 0

        promoted = run_cli("promote", "--config", config)
        assert promoted.returncode == 0 and promoted.stdout.startswith("promote: mnist-1"), promoted.stderr
        mark[0] = len(thresholds())
        assert live_from_now(SHADOW_THRESHOLD), thresholds()[-10:]
        assert thresholds()[-1] == SHADOW_THRESHOLD  # no frame of the old model after the switch
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]

    # The choice outlasts a restart; rollback goes back to the configured model.
    mark[0] = len(thresholds())
    daemon = DaemonProcess(config)
    try:
        assert live_from_now(SHADOW_THRESHOLD), daemon.log()[-3000:]
        rolled = run_cli("rollback", "--config", config)
        assert rolled.returncode == 0 and rolled.stdout.startswith("rollback: mnist-1"), rolled.stderr
        mark[0] = len(thresholds())
        assert live_from_now(bundle_threshold)
        assert thresholds()[-1] == bundle_threshold
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]

    audit = [json.loads(line) for line in (tmp_path / "state" / "model-audit.log").read_text().splitlines()]
    assert [(a["action"], a["ok"]) for a in audit] == [("promote", True), ("rollback", True)]
    assert audit[0]["to"]["path"] == str(candidate) and audit[1]["to"]["path"] == audit[0]["from"]["path"]
    assert audit[1]["to"]["sha256"] == audit[0]["from"]["sha256"]  # rollback restores the earlier model
    evidence = audit[0]["evidence"]  # what the comparison showed when the candidate was promoted
    assert evidence["frames"] >= 0 and {"agreements", "disagreements", "fail_rate"} <= set(evidence)
    # Neither swap lost a frame or scored one twice: every seq once, in order, across both runs and both swaps.
    seqs = [r["seq"] for r in results(collector)]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), seqs
    by_seq = {}
    for result in results(collector):  # a QoS 1 repeat is the same message again, never a second verdict
        assert by_seq.setdefault(result["seq"], result) == result
