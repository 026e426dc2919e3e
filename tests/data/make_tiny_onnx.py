#!/usr/bin/env python3
"""Writes tests/data/tiny_linear.onnx: `embeds [N,3] = input [N,4] · W + b`, W = arange(12)/10
reshaped 4×3, b = [1, 2, 3]. A runtime smoke test for simat's ONNX Runtime loading; not a CLIP
model. Needs `pip install onnx`."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

w = (np.arange(12, dtype=np.float32) / 10).reshape(4, 3)
b = np.array([1, 2, 3], dtype=np.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["embeds"])],
    "tiny_linear",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["N", 3])],
    [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="simat-tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_linear.onnx"))
