"""The fake's network and ONNX parser: layers made from ONNX nodes the way onnx-tensorrt names and annotates them.

Modelled on onnx-tensorrt (``ImporterContext::registerLayer``, ``processMetadata``, the ``ReduceL2`` /
``ReduceSumSquare`` importers): a node's layers are named after the node (``name``, ``name_1``, ...) and carry
``[ONNX Layer: name]`` metadata; helper layers the importer adds without registering them keep TensorRT's default
``(Unnamed Layer* N) [Type]`` name and no metadata (the x·x of ``ReduceL2``); initializers become constant layers
named after the weights. Tensor names are the ONNX tensor names.
"""

from __future__ import annotations

from typing import Any

import onnx

from fake_tensorrt.api import Checked

ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.DOUBLE: "FLOAT"}
LAYER_OF_OP = {
    "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION", "Einsum": "EINSUM",
    "Softmax": "SOFTMAX", "LogSoftmax": "SOFTMAX", "LayerNormalization": "NORMALIZATION", "TopK": "TOPK",
    "Gather": "GATHER", "GatherElements": "GATHER", "GatherND": "GATHER", "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE", "Unsqueeze": "SHUFFLE", "Squeeze": "SHUFFLE", "Flatten": "SHUFFLE",
    "Concat": "CONCATENATION", "Slice": "SLICE", "Expand": "SLICE", "Split": "SLICE", "Cast": "CAST",
    "Shape": "SHAPE", "Identity": "IDENTITY",
    "Range": "FILL", "ConstantOfShape": "FILL", "Where": "SELECT", "Clip": "ACTIVATION", "Relu": "ACTIVATION",
    "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION", "Sqrt": "UNARY", "Erf": "UNARY", "Exp": "UNARY", "Log": "UNARY",
    "Floor": "UNARY", "Ceil": "UNARY", "Round": "UNARY", "Neg": "UNARY", "Reciprocal": "UNARY", "Not": "UNARY",
    "CumSum": "CUMULATIVE",
}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare"}


class Tensor(Checked):
    _cls = "ITensor"

    def __init__(self, name: str, dtype: Any, shape: tuple[int, ...]) -> None:
        self._name, self._dtype, self._shape = name, dtype, tuple(shape)

    @property
    def name(self) -> str:
        return self._name

    @property
    def dtype(self) -> Any:
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape


class Layer(Checked):
    _cls = "ILayer"

    def __init__(self, trt: Any, name: str, ltype: str, metadata: str, inputs: list[Tensor], outputs: list[Tensor],
                 op: str) -> None:
        self._trt, self._name, self._type, self._metadata = trt, name, ltype, metadata
        self._inputs, self._outputs, self._op = inputs, outputs, op
        self._precision = None
        self._output_types: dict[int, Any] = {}

    name = property(lambda self: self._name)
    metadata = property(lambda self: self._metadata)
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    precision_is_set = property(lambda self: self._precision is not None)

    @property
    def type(self) -> Any:
        return getattr(self._trt.LayerType, self._type)

    def get_input(self, index: int) -> Tensor | None:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Tensor | None:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    @property
    def precision(self) -> Any:
        return self._precision if self._precision is not None else self._trt.float32

    @precision.setter
    def precision(self, dtype: Any) -> None:
        self._precision = dtype

    def set_output_type(self, index: int, dtype: Any) -> None:
        if not 0 <= index < len(self._outputs):
            raise IndexError(f"layer {self._name} has no output {index}")
        self._output_types[index] = dtype

    def get_output_type(self, index: int) -> Any:
        return self._output_types.get(index, self._outputs[index].dtype)

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types


class Network(Checked):
    _cls = "INetworkDefinition"

    def __init__(self, trt: Any, strongly_typed: bool) -> None:
        self._trt, self._strongly_typed = trt, strongly_typed
        self._layers: list[Layer] = []
        self._inputs: list[Tensor] = []
        self._outputs: list[Tensor] = []
        self._onnx: bytes = b""

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index: int) -> Layer:
        return self._layers[index]

    def get_input(self, index: int) -> Tensor:
        return self._inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self._outputs[index]


class ParserError(Checked):
    _cls = "ParserError"

    def __init__(self, node: str, op: str, desc: str) -> None:
        self._node, self._op, self._desc = node, op, desc

    def node_name(self) -> str:
        return self._node

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc


class OnnxParser(Checked):
    _cls = "OnnxParser"

    def __init__(self, network: Network, logger: Any) -> None:
        self._network, self._errors = network, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            data = open(model, "rb").read()  # noqa: SIM115 - tiny helper
            proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
        except Exception as exc:  # noqa: BLE001 - the real parser reports, it does not raise
            self._errors.append(type(self)._classes["ParserError"]("", "", f"cannot read {model}: {exc}"))
            return False
        for n in proto.graph.node:
            if n.op_type in ("GridSample", "NonZero", "Loop", "If", "Scan"):
                error = type(self)._classes["ParserError"](n.name, n.op_type, f"fake parser refuses {n.op_type}")
                self._errors.append(error)
        if self._errors:
            return False
        _Importer(self._network, proto).run()
        self._network._onnx = data
        return True


class _Importer:
    """Builds the network's layers from an inferred ONNX graph."""

    def __init__(self, network: Network, proto: onnx.ModelProto) -> None:
        self.net, self.trt, self.g = network, network._trt, proto.graph
        self.Tensor, self.Layer = type(network)._classes["Tensor"], type(network)._classes["Layer"]
        self.types = {vi.name: vi.type.tensor_type.elem_type for vi in (*self.g.input, *self.g.value_info,
                                                                        *self.g.output)}
        self.types.update({t.name: t.data_type for t in self.g.initializer})
        self.inits = {t.name: t for t in self.g.initializer}
        self.tensors: dict[str, Tensor] = {}
        self.unnamed = 0
        self.used_names: set[str] = set()

    def dtype(self, name: str) -> Any:
        return getattr(self.trt.DataType, ONNX_TO_TRT.get(self.types.get(name, 1), "FLOAT"))

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            if name in self.inits:  # initializers become constant layers named after the weights
                t = self.Tensor(name, self.dtype(name), tuple(self.inits[name].dims))
                self.add_layer(name, "CONSTANT", "", [], [t], "Constant")
            else:
                self.tensors[name] = self.Tensor(name, self.dtype(name), ())
        return self.tensors[name]

    def add_layer(self, name: str, ltype: str, metadata: str, inputs: list[Tensor], outputs: list[Tensor],
                  op: str) -> None:
        if not name:
            name = f"(Unnamed Layer* {self.unnamed}) [{ltype.title()}]"
        base, k = name, 0
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        self.unnamed += 1
        for t in outputs:
            self.tensors[t.name] = t
        ltype = ltype if hasattr(self.trt.LayerType, ltype) else "ELEMENTWISE"
        self.net._layers.append(self.Layer(self.trt, name, ltype, metadata, inputs, outputs, op))

    def run(self) -> None:
        for vi in self.g.input:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            t = self.Tensor(vi.name, self.dtype(vi.name), dims)
            self.tensors[vi.name] = t
            self.net._inputs.append(t)
        for node in self.g.node:
            self.node(node)
        self.net._outputs = [self.tensors[o.name] for o in self.g.output]

    def node(self, n: onnx.NodeProto) -> None:
        if n.op_type == "Constant":
            return
        meta = f"[ONNX Layer: {n.name}]"
        ins = [self.tensor(i) for i in n.input if i]
        outs = [self.Tensor(o, self.dtype(o), ()) for o in n.output if o]
        if n.op_type in ("ReduceL2", "ReduceSumSquare"):  # x*x unregistered, then the reduce (and sqrt) registered
            sq = self.Tensor(f"{n.name}__square", outs[0].dtype, ())
            self.add_layer("", "ELEMENTWISE", "", [ins[0], ins[0]], [sq], "Mul")
            if n.op_type == "ReduceL2":
                summed = self.Tensor(f"{n.name}__sum", outs[0].dtype, ())
                self.add_layer(n.name, "REDUCE", meta, [sq], [summed], n.op_type)
                self.add_layer(n.name, "UNARY", meta, [summed], outs, n.op_type)
            else:
                self.add_layer(n.name, "REDUCE", meta, [sq], outs, n.op_type)
            return
        ltype = "REDUCE" if n.op_type in REDUCE_OPS else LAYER_OF_OP.get(n.op_type, "ELEMENTWISE")
        self.add_layer(n.name, ltype, meta, ins, outs, n.op_type)
