"""The shipped ImageNet backbone: cut from the published TFLite classifier, resized, and its float twin.

Reproduce the committed cut from the original file (nothing is downloaded):

    python -m trainer.backbones cut ORIGINAL.tflite models/backbones/mobilenet_v2_cut.tflite

The cut keeps every operator up to the chosen block outputs and drops the rest (their weights too), so the file
returns those activations bit for bit as the full model computes them. MobileNetV2 is fully convolutional: the
trainer sets the input size per bundle. The float twin replaces every quantized tensor by its dequantized float
values (same weights, float arithmetic): what `score --use-float` and the report's float-vs-int8 check run.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
from pathlib import Path

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

BACKBONE_DIR = Path(__file__).resolve().parents[1] / "models" / "backbones"
BACKBONE_FILE = "mobilenet_v2_cut.tflite"
# TF-slim names of the block outputs kept: stride 8 (28x28x32 at 224 px) and stride 16 (14x14x96).
CUT_TENSORS = ("MobileNetV2/expanded_conv_5/add/add", "MobileNetV2/expanded_conv_12/add/add")
STRIDES = (8, 16)
QUANTIZED_TYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
                   schema.TensorType.INT32: np.int32}
QUANTIZE_OP = schema.BuiltinOperator.QUANTIZE


class BackboneError(ValueError):
    """A backbone file that is missing or not the expected network."""


def backbone_path() -> Path:
    path = BACKBONE_DIR / BACKBONE_FILE
    if not path.is_file():
        raise BackboneError(f"{path}: the ImageNet backbone is missing (see models/backbones/README.md)")
    return path


def _tensor_name(tensor) -> str:
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return name.split(";")[0]


def cut(model_bytes: bytes, tensor_names: tuple[str, ...] = CUT_TENSORS) -> bytes:
    """The model up to the named tensors, which become its outputs in that order; later operators and their
    weights are dropped."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    names = [_tensor_name(t) for t in graph.tensors]
    try:
        outputs = [names.index(name) for name in tensor_names]
    except ValueError as exc:
        raise BackboneError(f"the model has no tensor {exc}") from None
    last = max(i for i, op in enumerate(graph.operators) if set(op.outputs) & set(outputs))
    graph.operators = graph.operators[: last + 1]
    graph.outputs = np.array(outputs, dtype=np.int32)
    used = {int(t) for op in graph.operators for t in (*op.inputs, *op.outputs) if t >= 0} | set(graph.inputs)
    for index, tensor in enumerate(graph.tensors):
        if index not in used and tensor.buffer > 0:
            model.buffers[tensor.buffer].data = None  # the dropped layers' weights
    model.signatureDefs = []  # they name the classifier's outputs, which are gone
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def with_input_size(model_bytes: bytes, height: int, width: int) -> bytes:
    """The same network taking 1 x height x width x 3: every later shape follows when the interpreter prepares."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    tensor.shape = np.array([1, height, width, 3], dtype=np.int32)
    tensor.shapeSignature = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _dequantized(values: np.ndarray, quantization, shape) -> np.ndarray:
    scale = np.asarray(quantization.scale, dtype=np.float64)
    zero = np.asarray(quantization.zeroPoint, dtype=np.float64)
    if scale.size > 1:  # per channel, along quantizedDimension
        view = [1] * len(shape)
        view[quantization.quantizedDimension] = scale.size
        scale, zero = scale.reshape(view), zero.reshape(view)
    return ((values.reshape(shape).astype(np.float64) - zero) * scale).astype(np.float32)


def float_twin(model_bytes: bytes) -> bytes:
    """Every quantized tensor as float32 (constants dequantized), the input quantize operator removed: the same
    network in float arithmetic, taking the real-valued input the quantized model represents."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    model = copy.deepcopy(model)
    graph = model.subgraphs[0]
    first = graph.operators[0]
    if model.operatorCodes[first.opcodeIndex].builtinCode == QUANTIZE_OP:
        graph.tensors[first.outputs[0]].shape = graph.tensors[graph.inputs[0]].shape
        graph.inputs = np.array([first.outputs[0]], dtype=np.int32)
        graph.operators = graph.operators[1:]
    for tensor in graph.tensors:
        q = tensor.quantization
        if tensor.type not in QUANTIZED_TYPES or q is None or q.scale is None or len(q.scale) == 0:
            continue
        buffer = model.buffers[tensor.buffer] if tensor.buffer > 0 else None
        if buffer is not None and buffer.data is not None and len(buffer.data):
            raw = np.frombuffer(bytes(bytearray(buffer.data)), dtype=QUANTIZED_TYPES[tensor.type])
            buffer.data = np.frombuffer(_dequantized(raw, q, tuple(tensor.shape)).tobytes(), dtype=np.uint8)
        tensor.type = schema.TensorType.FLOAT32
        tensor.quantization = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.backbones", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cut", help="cut the published MobileNetV2 TFLite file at the feature layers")
    p.add_argument("source", type=Path, help="tf2_mobilenet_v2_1.0_224_ptq.tflite")
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    source = args.source.read_bytes()
    data = cut(source)
    args.out.write_bytes(data)
    print(f"source sha256 {sha256_hex(source)}\ncut    sha256 {sha256_hex(data)} ({len(data)} bytes) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
