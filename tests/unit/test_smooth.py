"""quantize.smooth: outlier channels move into the weights and the fp32 outputs stay the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from quantize.smooth import channel_absmax, smooth

C = 8
OUTLIER = 3


def layer_norm_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> LayerNorm (channel OUTLIER scaled 25x) -> two MatMuls, and the LayerNorm output
    also feeds a residual Add, as in a BERT layer."""
    gamma = np.ones(C, np.float32)
    gamma[OUTLIER] = 25.0
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(np.zeros(C, np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=(C, 5)).astype(np.float32), "w_a"),
        numpy_helper.from_array(rng.normal(size=(C, 6)).astype(np.float32), "w_b"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["ln", "w_a"], ["a"], name="mm_a"),
        helper.make_node("MatMul", ["ln", "w_b"], ["b"], name="mm_b"),
        helper.make_node("Add", ["ln", "x"], ["residual"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", C])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b", "residual")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(["a", "b", "residual"], {"x": x})]


def test_smoothing_keeps_fp32_outputs_and_flattens_the_outlier_channel() -> None:
    rng = np.random.default_rng(0)
    model = layer_norm_model(rng)
    x = rng.normal(size=(4, 6, C)).astype(np.float32)
    before = run(model, x)
    mask = np.ones((4, 6), dtype=bool)
    raw = channel_absmax(model, ["ln"], [({"x": x}, mask)])["ln"]
    assert raw[OUTLIER] > 10 * np.median(raw)

    assert smooth(model, [({"x": x}, mask)], alpha=0.5) == 1
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1, "one scale per activation, shared by its MatMuls"
    consumers = {n.name: list(n.input) for n in model.graph.node}
    assert consumers["mm_a"][0] == consumers["mm_b"][0] == muls[0].output[0]
    assert consumers["add"][0] == "ln", "the residual keeps the unscaled LayerNorm output"
    for old, new in zip(before, run(model, x)):
        np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-4)

    flat = channel_absmax(model, [muls[0].output[0]], [({"x": x}, mask)])[muls[0].output[0]]
    assert flat.max() / np.median(flat) < raw.max() / np.median(raw) / 3


def test_padding_does_not_set_the_scales() -> None:
    rng = np.random.default_rng(1)
    model = layer_norm_model(rng)
    x = rng.normal(size=(2, 5, C)).astype(np.float32)
    mask = np.ones((2, 5), dtype=bool)
    mask[1, 3:] = False
    x[1, 3:] = 0.0
    x[1, 3:, 0] = 50.0  # padding that LayerNorm turns into channel 0's largest value
    real = channel_absmax(model, ["ln"], [({"x": x[:1]}, mask[:1]), ({"x": x[1:, :3]}, mask[1:, :3])])["ln"]
    masked = channel_absmax(model, ["ln"], [({"x": x}, mask)])["ln"]
    np.testing.assert_allclose(masked, real, rtol=1e-6)
    everything = channel_absmax(model, ["ln"], [({"x": x}, np.ones_like(mask))])["ln"]
    assert (everything >= masked).all() and everything[0] > masked[0]


def test_a_graph_without_layer_norm_is_left_alone() -> None:
    w = numpy_helper.from_array(np.eye(C, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert smooth(model, [], alpha=0.5) == 0
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
