"""The reference for pipeline efficiency: nothing but `interpreter.invoke()` in a loop.

    python -m benchmarks.bare_invoke MODEL.tflite THREADS FRAMES WARMUP [IMAGE]

Same runtime module and thread count as the daemon, a real frame as input. Prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time

import cv2
import numpy as np


def main() -> int:
    model_path, threads, frames, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    image_path = sys.argv[5] if len(sys.argv) > 5 else None
    from edge.core.runtime import interpreter_class

    interpreter_type, runtime = interpreter_class()
    interpreter = interpreter_type(model_path=model_path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
    if image_path:
        image = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE)
        tensor = cv2.resize(image, (shape[2], shape[1])).reshape(shape).astype(dtype)
    else:
        tensor = np.zeros(shape, dtype)
    interpreter.set_tensor(detail["index"], tensor)
    for _ in range(warmup):
        interpreter.invoke()
    clock = time.perf_counter
    stamps = [clock()]
    cpu_started = time.process_time()
    for _ in range(frames - warmup):
        interpreter.invoke()
        stamps.append(clock())
    cpu_s = time.process_time() - cpu_started
    elapsed = stamps[-1] - stamps[0]
    intervals = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    print(json.dumps({"runtime": runtime, "threads": threads, "invokes": frames - warmup,
                      "fps": (frames - warmup) / elapsed, "ms_per_invoke": elapsed / (frames - warmup) * 1000,
                      "fps_median_interval": 1.0 / intervals[len(intervals) // 2],
                      "cpu_ms_per_invoke": cpu_s / (frames - warmup) * 1000}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
