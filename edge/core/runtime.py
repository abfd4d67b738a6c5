"""The model runtime: LiteRT, else tflite-runtime (never TensorFlow). The only module that imports them.

TFLiteStage runs one model file; StageChain runs a bundle's stages in order.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Tried in order; the device needs only the first, which the trainer's install includes too.
RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


# The PyPI distribution of each runtime module, for its version.
RUNTIME_DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}

# The SIMD extensions that LiteRT's CPU kernels (XNNPACK) choose between, by the names Linux gives them.
# arm64: bits of the auxiliary vector's AT_HWCAP and AT_HWCAP2, which is where XNNPACK reads them from.
ARM64_HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
ARM64_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16", 23: "sme"}
AT_HWCAP, AT_HWCAP2 = 16, 26
# x86: /proc/cpuinfo flags (CPUID as the kernel enabled it).
X86_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_int8")


def runtime_version() -> str:
    """The installed runtime and its version, e.g. "ai-edge-litert 2.3.0", without importing it."""
    for name in RUNTIME_MODULES:
        distribution = RUNTIME_DISTRIBUTIONS[name.split(".")[0]]
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return "no TFLite runtime installed"


def _arm64_hwcaps() -> list[str] | None:
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    words = (getauxval(AT_HWCAP), getauxval(AT_HWCAP2))
    return [name for word, table in zip(words, (ARM64_HWCAP, ARM64_HWCAP2))
            for bit, name in table.items() if word >> bit & 1]


def _cpuinfo_words(*keys: str) -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return set(value.split())
    return set()


def cpu_features() -> str:
    """The SIMD extensions this CPU offers that LiteRT's XNNPACK kernels can use, e.g. "aarch64: asimd asimddp".

    LiteRT does not report which kernels it chose; it picks the best of these (by the same HWCAP bits on arm64)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        names = _arm64_hwcaps() if platform.system() == "Linux" else None
        if names is None:
            names = sorted(_cpuinfo_words("Features") & {*ARM64_HWCAP.values(), *ARM64_HWCAP2.values()})
    elif machine in ("x86_64", "amd64", "i686", "i386"):
        offered = _cpuinfo_words("flags")
        names = [flag for flag in X86_FLAGS if flag in offered]
    else:
        names = sorted(_cpuinfo_words("Features", "flags"))
    return f"{machine}: {' '.join(names) or 'none of the SIMD extensions it knows'}"


class RuntimeMissing(ImportError):
    """No TFLite interpreter is installed."""


class ModelLoadError(ValueError):
    """A model file the interpreter refuses; the message names the file."""


def interpreter_class() -> tuple[type, str]:
    for name in RUNTIME_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Interpreter, name.split(".")[0]
    raise RuntimeMissing("no TFLite runtime found: pip install 'lineguard[edge]' (ai-edge-litert)")


class TFLiteStage:
    """One TFLite model with one input and one output: float array in, dequantized float array out."""

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        interpreter_type, self.runtime = interpreter_class()
        self.path = Path(model_path)
        try:
            # From bytes, not a path: the interpreter would memory-map the file, and a model replaced in
            # place on disk would then crash the daemon with SIGBUS.
            self.model_bytes = self.path.read_bytes()
            self.interpreter = interpreter_type(model_content=self.model_bytes, num_threads=threads)
            self.interpreter.allocate_tensors()
        except OSError as exc:
            raise ModelLoadError(f"{self.path}: cannot read: {exc.strerror}") from None
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self.path}: not a loadable TFLite model: {exc}") from None
        input_detail = self.interpreter.get_input_details()[0]
        output_details = self.interpreter.get_output_details()
        output_detail = output_details[0]
        # Further outputs (a backbone cut at several layers), read by run_all: (index, unbatched shape, zero, scale).
        self.extra_outputs = [(d["index"], tuple(int(v) for v in d["shape"][1:]), d["quantization"][1],
                               np.float32(d["quantization"][0]), np.dtype(d["dtype"])) for d in output_details[1:]]
        self.input_index = input_detail["index"]
        self.output_index = output_detail["index"]
        self.input_shape = tuple(int(v) for v in input_detail["shape"])
        self.output_shape = tuple(int(v) for v in output_detail["shape"])
        self.input_dtype = np.dtype(input_detail["dtype"])
        self.output_dtype = np.dtype(output_detail["dtype"])
        self.input_scale, self.input_zero = input_detail["quantization"]
        self.output_scale, self.output_zero = output_detail["quantization"]
        self._output_scale_f32 = np.float32(self.output_scale)
        self._unbatched_output_shape = self.output_shape[1:]
        # uint8 pixels feed a uint8 model directly when its input quantization is exactly 1/255, 0.
        self.takes_raw_uint8 = (
            self.input_dtype == np.uint8 and self.input_zero == 0 and abs(self.input_scale * 255 - 1) < 1e-6
        )
        logger.info(
            "model %s on %s: input %s %s, %d thread(s)",
            self.path.name, self.runtime, list(self.input_shape), self.input_dtype.name, threads,
        )

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.float32:
            return x.astype(np.float32, copy=False)
        info = np.iinfo(self.input_dtype)
        q = np.rint(x / self.input_scale + self.input_zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype == np.float32:
            return y
        # In place on one fresh float32 array: the same float32 operations as (y - zero) * scale
        # (subtracting a zero point of 0 changes nothing, so it is skipped).
        out = y.astype(np.float32)
        if self.output_zero:
            np.subtract(out, np.float32(self.output_zero), out=out)
        np.multiply(out, self._output_scale_f32, out=out)
        return out

    def _invoke(self, x: np.ndarray | None, pixels: np.ndarray | None) -> None:
        if pixels is not None and self.takes_raw_uint8 and pixels.dtype == np.uint8:
            tensor = pixels
        else:
            tensor = self._quantize(x)
        self.interpreter.set_tensor(self.input_index, tensor.reshape(self.input_shape))
        self.interpreter.invoke()

    def run(self, x: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        """One unbatched float input -> the unbatched, dequantized float output.

        `pixels`, the same image as uint8, skips quantization when the model can take it as is.
        """
        self._invoke(x, pixels)
        output = self.interpreter.get_tensor(self.output_index)
        return self._dequantize(output).reshape(self._unbatched_output_shape)

    def run_all(self, x: np.ndarray | None, pixels: np.ndarray | None = None) -> list[np.ndarray]:
        """Like run, for a model with several outputs: each one unbatched and dequantized, in the model's order."""
        outputs = [self.run(x, pixels)]
        for index, shape, zero, scale, dtype in self.extra_outputs:
            output = self.interpreter.get_tensor(index)
            if dtype != np.float32:
                output = output.astype(np.float32)
                if zero:
                    np.subtract(output, np.float32(zero), out=output)
                np.multiply(output, scale, out=output)
            outputs.append(output.reshape(shape))
        return outputs


class StageChain:
    """TFLite stages run in order, each one's output the next one's input (e.g. a backbone, then a head)."""

    def __init__(self, model_paths: list[Path], threads: int = 1) -> None:
        if not model_paths:
            raise ModelLoadError("no model files to run")
        self.stages = [TFLiteStage(path, threads=threads) for path in model_paths]
        for before, after in zip(self.stages, self.stages[1:]):
            if before.output_shape != after.input_shape:
                raise ModelLoadError(
                    f"{after.path}: takes {list(after.input_shape)}, but {before.path.name} before it returns "
                    f"{list(before.output_shape)}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.stages[0].input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.stages[-1].output_shape

    def run(self, x: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        """Float model input (and its uint8 pixels, for the first stage's fast path) -> the last stage's output."""
        for stage in self.stages:
            x = stage.run(x, pixels)
            pixels = None
        return x
