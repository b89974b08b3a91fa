"""What `make engine` produced (built by the session fixture with the real CLIs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from interest_core.config import Settings
from interest_model.onnx_runtime import cpu_has_vnni, saturating_weights

pytestmark = pytest.mark.integration


def test_int8_model_is_explicit_symmetric_qdq(engine: Path) -> None:
    model = onnx.load(str(engine / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(quant) >= 24 and len(dequant) >= len(quant)
    zero_points = [inits[n.input[2]] for n in dequant if len(n.input) > 2 and n.input[2] in inits]
    weights = [z for z in zero_points if z.dtype == np.int8]
    activations = [z for z in zero_points if z.dtype == np.uint8]
    assert weights and all((z == 0).all() for z in weights), "weights symmetric int8"
    # 8-bit weights (some |w| > 64) where VNNI accumulates u8 x s8 in int32; 7-bit without it,
    # so the pairs cannot saturate int16.
    assert saturating_weights(engine / "model.int8.onnx") == cpu_has_vnni()
    assert activations and all((z == 128).all() for z in activations), "activations symmetric uint8"
    smoothing = [n for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert len(smoothing) == 12, "each layer's two LayerNorm outputs (attention and FFN inputs) smoothed"
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    assert names == (["input_ids", "attention_mask"], ["interest_embedding"])


def test_validation_gate_figure_is_recorded(engine: Path, settings: Settings) -> None:
    report = json.loads((engine / "validation.json").read_text())
    assert report["passed"] and report["texts"] >= 256
    # Smoothing took the committed checkpoint's held-out cosine from 0.981 to 0.995.
    assert report["mean_cosine"] >= report["threshold_mean_cosine"] == 0.99
    version = json.loads((settings.model_repository / "interest_encoder" / "VERSION.json").read_text())
    assert version["validation"]["mean_cosine"] == report["mean_cosine"]
    config = (settings.model_repository / "interest_encoder" / "config.pbtxt").read_text()
    assert 'key: "allow_spinning" value: { string_value: "0" }' in config
