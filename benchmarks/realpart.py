"""Case 9: the shipped real-part bundle (models/magnetic-tile, `features` kind) on one interpreter thread.

`realpart_ms_per_frame` is the whole frame path, Inspector.inspect on a decoded frame: preprocess, backbone,
head, smoothing, score, verdict, regions. `realpart_pipeline_efficiency` is the bare backbone invoke time over
that, measured in the same run: rounds of frames and of bare invokes alternate, and the ratio is the median of
the rounds' ratios (the machine is shared and noisy). Frames are the committed magnetic-tile test fixtures.
"""
from __future__ import annotations

import statistics
import time

import cv2
import numpy as np

from benchmarks.common import ROOT, log, rounded
from benchmarks.pi_estimate import CORE_VS_N100, PI_OVER_N100, fps

BUNDLE = ROOT / "models" / "magnetic-tile"
FRAMES = ROOT / "tests" / "fixtures" / "magnetic-tile" / "test"
ROUNDS = 15
PER_ROUND = 20
WARMUP = 10


def _frames() -> list[np.ndarray]:
    paths = sorted(FRAMES.glob("*/*.jpg"))
    if not paths:
        raise RuntimeError(f"case 9 needs the frames in {FRAMES}")
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


def _per_call_ms(call, count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        call(i)
    return (time.perf_counter() - wall) / count * 1000, (time.process_time() - cpu) / count * 1000


def run() -> dict:
    from edge.core.inspector import Inspector

    log("case 9: real-part bundle %s, one thread", BUNDLE.name)
    inspector = Inspector(BUNDLE, threads=1)
    stage = inspector.pipeline.chain.stages[0]
    frames = _frames()
    features = inspector.pipeline.features
    sample_features = features(*_model_input(inspector, frames[0]))[:, inspector.pipeline.head.channels]
    tensor = np.zeros(stage.input_shape, stage.input_dtype)
    stage.interpreter.set_tensor(stage.input_index, tensor)

    def path(i: int) -> None:
        inspector.inspect(frames[i % len(frames)])

    def bare(_: int) -> None:
        stage.interpreter.invoke()

    def head(_: int) -> None:
        inspector.pipeline.head.distances(sample_features)

    for call in (path, bare, head):
        _per_call_ms(call, WARMUP)
    rounds = []
    for _ in range(ROUNDS):
        rounds.append((_per_call_ms(path, PER_ROUND), _per_call_ms(bare, PER_ROUND), _per_call_ms(head, PER_ROUND)))
    path_ms = statistics.median(r[0][0] for r in rounds)
    bare_ms = statistics.median(r[1][0] for r in rounds)
    head_ms = statistics.median(r[2][0] for r in rounds)
    path_cpu = statistics.median(r[0][1] for r in rounds)
    bare_cpu = statistics.median(r[1][1] for r in rounds)
    efficiency = statistics.median(r[1][0] / r[0][0] for r in rounds)
    pi = {device: {k: rounded(fps(bare_cpu, max(0.0, path_cpu - bare_cpu), device, c), 1)
                   for k, c in CORE_VS_N100.items()} for device in PI_OVER_N100}
    log("  whole frame %.2f ms, bare backbone %.2f ms, head %.2f ms: efficiency %.3f; Pi 4 about %.1f fps, "
        "Pi 5 about %.1f fps", path_ms, bare_ms, head_ms, efficiency, pi["pi4"]["central"], pi["pi5"]["central"])
    return {
        "realpart_ms_per_frame": rounded(path_ms, 3),
        "realpart_pipeline_efficiency": rounded(efficiency, 3),
        "realpart": {
            "bundle": BUNDLE.name, "kind": inspector.bundle.kind,
            "head": inspector.bundle.architecture.get("head", {}).get("type"),
            "input": list(inspector.bundle.input_shape), "threads": 1, "frames": len(frames),
            "rounds": ROUNDS, "per_round": PER_ROUND,
            "ms_per_frame": rounded(path_ms, 3), "bare_backbone_ms": rounded(bare_ms, 3),
            "head_ms": rounded(head_ms, 3),
            "head_statistics_mb": rounded(_head_bytes(inspector.pipeline.head) / 1e6, 2),
            "cpu_ms_per_frame": {"path": rounded(path_cpu, 3), "bare_backbone": rounded(bare_cpu, 3)},
            "pi_estimate_fps": pi,
        },
    }


def _head_bytes(head) -> int:
    """The head's arrays in memory: what the device reads for every frame (PaDiM) or keeps (bank)."""
    return sum(value.nbytes for value in vars(head).values() if isinstance(value, np.ndarray))


def _model_input(inspector, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edge.core.preprocess import scale, to_pixels

    pixels = to_pixels(frame, inspector.spec)
    return scale(pixels), pixels


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """The case's lines in the headline table of latest.md."""
    rp = r.get("realpart")
    if not rp:
        return []
    command = "`python -m benchmarks.run --case 9`"
    pi4, pi5 = rp["pi_estimate_fps"]["pi4"], rp["pi_estimate_fps"]["pi5"]
    return [
        ("Real-part bundle (magnetic-tile, features), whole frame, threads=1 (`realpart_ms_per_frame`)",
         f"{r.get('realpart_ms_per_frame')} ms", "", "", command),
        ("   bare backbone / whole frame (`realpart_pipeline_efficiency`); head alone; head statistics in memory",
         f"{r.get('realpart_pipeline_efficiency')}; {rp.get('head_ms')} ms; {rp.get('head_statistics_mb')} MB",
         "", "", command),
        ("   Pi 4 / Pi 5 estimate, whole frame (range)",
         f"{pi4['central']} ({pi4['high']}-{pi4['low']}) / {pi5['central']} ({pi5['high']}-{pi5['low']}) fps",
         ">= 15 fps on a Pi 4", "met" if pi4["central"] >= 15 else "**not met**", command),
    ]
