"""quantize.int8: 7-bit weights exactly where u8 x s8 products could saturate int16."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from interest_model.onnx_runtime import cpu_has_vnni, saturating_weights, warn_if_saturating
from quantize.int8 import weight_bits_for, without_pre_process_advice


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n")
    return path


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512bw avx512_vnni"))
    assert cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx_vnni"))
    assert not cpu_has_vnni(cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512bw"))
    assert not cpu_has_vnni(tmp_path / "missing"), "unknown CPU: the safe answer"


def test_seven_bit_weights_only_for_uint8_without_vnni() -> None:
    assert weight_bits_for("uint8", vnni=False) == 7
    assert weight_bits_for("uint8", vnni=True) == 8
    assert weight_bits_for("int8", vnni=False) == 8, "TensorRT's int8 path has no int16 pairs"
    # The reason: with |w| <= 64 the largest u8 x s8 pair (255 * 64 * 2) still fits int16; with
    # 127 it does not (below: which engines `saturating_weights` flags).


def qdq_model(path: Path, weight_max: int, activation: int) -> Path:
    """x -> QuantizeLinear (activation type) -> DequantizeLinear -> MatMul with an int8 weight."""
    act_zero = np.array(128 if activation == TensorProto.UINT8 else 0,
                        dtype=np.uint8 if activation == TensorProto.UINT8 else np.int8)
    weight = np.full((4, 3), weight_max, dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        numpy_helper.from_array(act_zero, "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(3, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_engine_that_could_saturate_here_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eight = qdq_model(tmp_path / "eight.onnx", 127, TensorProto.UINT8)
    seven = qdq_model(tmp_path / "seven.onnx", 64, TensorProto.UINT8)
    signed = qdq_model(tmp_path / "signed.onnx", 127, TensorProto.INT8)
    assert saturating_weights(eight) and not saturating_weights(seven) and not saturating_weights(signed)
    with caplog.at_level(logging.WARNING, logger="interest.runtime"):
        assert not warn_if_saturating(eight, vnni=True)
        assert not warn_if_saturating(seven, vnni=False)
        assert not caplog.records
        assert warn_if_saturating(eight, vnni=False)
    assert "rebuild the engine here" in caplog.text and "eight.onnx" in caplog.text


def test_onnx_runtime_pre_process_advice_is_dropped_only_while_quantizing(
        caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's advice to pre-process (measured: no gain here) is kept out of `make
    engine`'s log; every other warning, and the advice outside quantizing, still shows."""
    with caplog.at_level(logging.WARNING):
        with without_pre_process_advice():
            logging.warning("Please consider to run pre-processing before quantization. Refer to ...")
            logging.warning("Please consider pre-processing before quantization. See ...")
            logging.getLogger("onnxruntime").warning("another warning while quantizing")
        logging.warning("Please consider pre-processing before quantization. See ...")
    assert [r.getMessage() for r in caplog.records] == [
        "another warning while quantizing", "Please consider pre-processing before quantization. See ..."]
