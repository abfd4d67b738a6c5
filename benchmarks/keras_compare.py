"""Case 3, the study's way against ours: per-frame latency on the same CPU and the same MNIST images.

The study runs its Keras model per frame in TensorFlow. Its model, 784 -> 392 -> 64 -> 392 -> 784 with ReLU
and a sigmoid output, is built here with Keras (weights do not change the timing) and timed as `model(x)`
(eager) and `model.predict(x)`, one 28x28 frame at a time, with TensorFlow's default threading. Ours is the
full per-frame path on the int8 mnist-1 bundle, Inspector.inspect (preprocess, LiteRT invoke, residual map,
score, quality gate, verdict) with one interpreter thread; a bare interpreter.invoke() is reported too.
The variants run in blocks, interleaved, in one process; each figure is the median of the block means.

    python -m benchmarks.keras_compare --child     # prints one JSON line (run by benchmarks.run)
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

from benchmarks.common import log, rounded, run_json

GOAL_SPEEDUP = 100.0
ROUNDS = 5
CALLS_PER_BLOCK = {"keras_eager": 100, "keras_predict": 10, "ours_inspect": 1000,
                   "ours_inspect_no_quality_gate": 1000, "bare_invoke": 2000}
FRAMES = 50
PAUSE_BETWEEN_BLOCKS_S = 0.05  # lets TensorFlow's worker threads stop spinning before the next block


def study_model():
    import keras

    inputs = keras.Input(shape=(28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(392, activation="relu")(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(392, activation="relu")(x)
    x = keras.layers.Dense(784, activation="sigmoid")(x)
    return keras.Model(inputs, keras.layers.Reshape((28, 28, 1))(x), name="study_dense_ae")


def load_frames():
    import numpy as np

    from benchmarks.workloads import MNIST_FIXTURE

    data = np.load(MNIST_FIXTURE)
    return list(data["x_test"][:FRAMES])


def block_timer(call, frames: list, calls: int) -> float:
    """Mean milliseconds per call over one block, cycling through the frames."""
    count = len(frames)
    started = time.perf_counter()
    for i in range(calls):
        call(frames[i % count])
    return (time.perf_counter() - started) / calls * 1000.0


def child() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from benchmarks.workloads import MNIST_BUNDLE
    from edge.core.inspector import Inspector

    frames = load_frames()
    as_model_input = [(f.astype(np.float32) / 255.0).reshape(1, 28, 28, 1) for f in frames]
    model = study_model()
    inspector = Inspector(MNIST_BUNDLE, threads=1)
    ungated = Inspector(MNIST_BUNDLE, threads=1, quality_gate=False)
    interpreter = inspector.pipeline.chain.stages[0].interpreter

    variants = {
        "keras_eager": (lambda x: model(x), as_model_input),
        "keras_predict": (lambda x: model.predict(x, verbose=0), as_model_input),
        "ours_inspect": (lambda f: inspector.inspect(f), frames),
        "ours_inspect_no_quality_gate": (lambda f: ungated.inspect(f), frames),
        "bare_invoke": (lambda f: interpreter.invoke(), frames),
    }
    for call, inputs in variants.values():  # warm-up: graph tracing, weight packing
        for item in inputs[:5]:
            call(item)
    # TensorFlow's import leaves millions of objects; freezing them keeps the cyclic collector from rescanning
    # them during every variant's timing, as it never has to in the daemon, which does not import TensorFlow.
    gc.collect()
    gc.freeze()
    blocks: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, (call, inputs) in variants.items():
            time.sleep(PAUSE_BETWEEN_BLOCKS_S)
            blocks[name].append(block_timer(call, inputs, CALLS_PER_BLOCK[name]))
    ms = {name: statistics.median(values) for name, values in blocks.items()}
    return {
        "ms_per_frame": ms, "blocks_ms": blocks,
        "tensorflow": tf.__version__, "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "keras_parameters": int(model.count_params()),
    }


def run() -> dict:
    log("case 3: Keras (eager, predict) against LiteRT int8, %d interleaved rounds", ROUNDS)
    data = run_json("benchmarks.keras_compare", "--child", timeout_s=300)
    ms = data["ms_per_frame"]
    ours = ms["ours_inspect"]
    speedup = ms["keras_eager"] / ours
    log("  eager %.3f ms, predict %.2f ms, ours %.4f ms (bare invoke %.4f ms): %.0fx", ms["keras_eager"],
        ms["keras_predict"], ours, ms["bare_invoke"], speedup)
    return {
        "speedup_vs_keras_eager": rounded(speedup, 1),
        "keras_compare": {
            "goal_speedup": GOAL_SPEEDUP, "met": speedup >= GOAL_SPEEDUP,
            "ms_per_frame": {k: rounded(v, 4) for k, v in ms.items()},
            "speedup_vs_keras_eager": rounded(speedup, 1),
            "speedup_vs_keras_predict": rounded(ms["keras_predict"] / ours, 1),
            "speedup_vs_keras_eager_without_quality_gate": rounded(ms["keras_eager"] / ms["ours_inspect_no_quality_gate"], 1),
            "speedup_vs_keras_eager_bare_invoke": rounded(ms["keras_eager"] / ms["bare_invoke"], 1),
            "tensorflow": data["tensorflow"], "keras_parameters": data["keras_parameters"],
            "tf_threads": "default (intra/inter 0 = all cores)" if not data["tf_intra_op_threads"] else
                          f"intra {data['tf_intra_op_threads']}, inter {data['tf_inter_op_threads']}",
            "litert_threads": 1, "rounds": ROUNDS, "calls_per_block": CALLS_PER_BLOCK,
        },
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(child()))
        sys.exit(0)
    print(json.dumps(run(), indent=2))
