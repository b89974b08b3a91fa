"""The NGC model repositories (quantize.ngc_repository): every config.pbtxt parses with Triton's
own model_config proto, and its tensors' names, types and shapes are the ONNX graph's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from interest_core.config import ROOT
from interest_core.contract import ATTENTION_MASK, INPUT_IDS, OUTPUT
from quantize import ngc_repository as ngc

DIM = 8
INSTALLED_ONNX = ROOT / "model_repository" / "interest_encoder" / "1" / "model.onnx"
_TRITON_TO_ONNX = {model_config_pb2.TYPE_INT64: TensorProto.INT64,
                   model_config_pb2.TYPE_FP32: TensorProto.FLOAT}


def tiny_encoder(path: Path, dim: int = DIM, *, input_names: tuple[str, str] = (INPUT_IDS, ATTENTION_MASK),
                 output_type: int = TensorProto.FLOAT, seq: str | int = "seq") -> Path:
    """A few-node ONNX with the encoder's interface: int64 [batch, seq] x2 -> float32 [batch, dim]
    (masked token count times a constant row; the numbers do not matter here)."""
    ids, mask = input_names
    graph = helper.make_graph(
        [helper.make_node("Cast", [mask], ["mask_f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["mask_f", "axes"], ["count"], keepdims=1),
         helper.make_node("Mul", ["count", "row"], ["emb"]),
         helper.make_node("Cast", ["emb"], [OUTPUT], to=output_type)],
        "tiny_encoder",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", seq]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info(OUTPUT, output_type, ["batch", dim])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
                     numpy_helper.from_array(np.ones(dim, dtype=np.float32), "row")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def assert_matches_graph(cfg: model_config_pb2.ModelConfig, onnx_path: Path) -> None:
    """Names, element types and non-batch dims of the config equal the ONNX graph's."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def graph_side(values: object) -> dict[str, tuple[int, list[int]]]:
        return {v.name: (v.type.tensor_type.elem_type,
                         [d.dim_value if d.HasField("dim_value") else -1
                          for d in v.type.tensor_type.shape.dim][1:])
                for v in values if v.name not in init}  # type: ignore[attr-defined]

    def config_side(tensors: object) -> dict[str, tuple[int, list[int]]]:
        return {t.name: (_TRITON_TO_ONNX[t.data_type], list(t.dims)) for t in tensors}  # type: ignore[attr-defined]

    assert config_side(cfg.input) == graph_side(graph.input)
    assert config_side(cfg.output) == graph_side(graph.output)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_config_parses_and_matches_the_graph(tmp_path: Path, target: str) -> None:
    onnx_path = tiny_encoder(tmp_path / "m.onnx")
    io = ngc.read_io(onnx_path)
    cfg = parse(ngc.render_ngc_config("interest_encoder", target, io, max_batch=256, max_seq=64))
    assert_matches_graph(cfg, onnx_path)
    assert cfg.name == "interest_encoder" and cfg.max_batch_size == 256
    assert not cfg.backend, "served by Triton's own backend, not the python backend"
    assert not any(i.allow_ragged_batch for i in cfg.input), "a [batch, seq] graph takes no ragged input"
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == (0 if target == "cpu" else 2000)
    kind = model_config_pb2.ModelInstanceGroup
    assert len(cfg.instance_group) == 1
    if target == "cpu":
        assert cfg.platform == "onnxruntime_onnx"
        assert cfg.instance_group[0].kind == kind.KIND_CPU and cfg.instance_group[0].count == 2
        assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    else:
        assert cfg.platform == "tensorrt_plan" and not cfg.parameters
        assert cfg.instance_group[0].kind == kind.KIND_GPU
    # One warmup per sequence bucket, each feeding every input at that length.
    assert [list(w.inputs[INPUT_IDS].dims) for w in cfg.model_warmup] == [[16], [32], [64]]
    assert all(set(w.inputs) == {INPUT_IDS, ATTENTION_MASK} and w.batch_size == 1 for w in cfg.model_warmup)


def test_buckets_stop_at_the_served_length() -> None:
    assert ngc.buckets_for(64) == (16, 32, 64)
    assert ngc.buckets_for(48) == (16, 32, 48)
    assert ngc.buckets_for(8) == (8,)


@pytest.mark.parametrize("broken", ["names", "type", "static_seq"])
def test_graph_outside_the_contract_is_refused(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "m.onnx"
    if broken == "names":
        tiny_encoder(path, input_names=("input.1", "onnx::attention_mask"))
    elif broken == "type":
        tiny_encoder(path, output_type=TensorProto.DOUBLE)
    else:
        tiny_encoder(path, seq=128)
    with pytest.raises(ngc.ContractError):
        ngc.read_io(path)


def test_repositories_written_with_plan_missing_on_cpu(tmp_path: Path) -> None:
    onnx_path = tiny_encoder(tmp_path / "m.onnx")
    out = tmp_path / "ngc"
    manifest = ngc.write_repositories(onnx_path, out, name="interest_encoder", max_batch=32, max_seq=64)
    cpu = out / "model_repository_cpu" / "interest_encoder"
    gpu = out / "model_repository_gpu" / "interest_encoder"
    assert (cpu / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (gpu / "config.pbtxt").exists() and not (gpu / "1" / "model.plan").exists()
    for model_dir in (cpu, gpu):
        assert_matches_graph(parse((model_dir / "config.pbtxt").read_text()), onnx_path)
    assert json.loads((out / ngc.MANIFEST).read_text()) == manifest
    gpu_entry = manifest["gpu"]
    assert isinstance(gpu_entry, dict) and gpu_entry["artifact"] is None
    assert "TensorRT" in gpu_entry["missing"]
    # With a plan it is copied in, and a second run replaces the first.
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    ngc.write_repositories(onnx_path, out, name="interest_encoder", max_batch=32, max_seq=64, plan=plan)
    assert (gpu / "1" / "model.plan").read_bytes() == b"engine bytes"


def test_cli_refuses_a_model_that_failed_its_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = tiny_encoder(tmp_path / "m.onnx")
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"passed": False}))
    assert ngc.main(["--onnx", str(onnx_path), "--report", str(report), "--out", str(tmp_path / "o")]) == 1
    assert "REFUSED" in capsys.readouterr().out and not (tmp_path / "o").exists()
    report.write_text(json.dumps({"passed": True}))
    assert ngc.main(["--onnx", str(onnx_path), "--report", str(report), "--out", str(tmp_path / "o")]) == 0
    assert "MISSING" in capsys.readouterr().out


@pytest.mark.skipif(not INSTALLED_ONNX.exists(), reason="no model installed (make engine)")
def test_installed_model_fits_both_configs() -> None:
    io = ngc.read_io(INSTALLED_ONNX)
    for target in ("cpu", "gpu"):
        assert_matches_graph(parse(ngc.render_ngc_config("interest_encoder", target, io, 256, 64)),
                             INSTALLED_ONNX)
