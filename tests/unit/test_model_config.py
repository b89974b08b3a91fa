"""config.pbtxt is the model contract: parse what `quantize.install` writes with Triton's own
model_config proto and check names, batching and warmup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from quantize import install
from quantize.install import render_config


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_rendered_config_parses_with_named_tensors(target: str) -> None:
    cfg = parse(render_config("interest_encoder", target, 64, 384, 64, 2))
    assert cfg.name == "interest_encoder" and cfg.max_batch_size == 64
    assert [i.name for i in cfg.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in cfg.output] == ["interest_embedding"]
    assert list(cfg.output[0].dims) == [384]
    assert all(list(i.dims) == [-1] and i.data_type == model_config_pb2.TYPE_INT64 for i in cfg.input)
    assert cfg.HasField("dynamic_batching")
    # CPU: an idle instance takes a request at once (two concurrent requests run side by side,
    # not merged onto one single-threaded instance); GPU: one instance, a short delay.
    assert cfg.dynamic_batching.max_queue_delay_microseconds == (0 if target == "cpu" else 2000)
    assert len(cfg.instance_group) == 1 and len(cfg.model_warmup) == 1
    assert set(cfg.model_warmup[0].inputs) == {"input_ids", "attention_mask"}
    if target == "cpu":
        assert cfg.backend == "python" and all(i.allow_ragged_batch for i in cfg.input)
        assert cfg.parameters["onnx_file"].string_value == "model.onnx"
    else:
        assert cfg.platform == "tensorrt_plan"
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_install_refuses_a_model_that_failed_its_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used")
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"passed": False, "mean_cosine": 0.84, "threshold_mean_cosine": 0.97}))
    monkeypatch.setenv("INTEREST_MODEL_REPOSITORY", str(tmp_path / "repo"))
    assert install.main(["--onnx", str(onnx), "--report", str(report)]) == 1
    assert "REFUSED" in capsys.readouterr().out
    assert not (tmp_path / "repo").exists()


def test_install_writes_repository_with_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"weights")
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"passed": True, "mean_cosine": 0.98}))
    monkeypatch.setenv("INTEREST_MODEL_REPOSITORY", str(tmp_path / "repo"))
    # Not a model ONNX Runtime can run: the catalogues' embedding is tested in test_installed_catalogue.
    embedded: list[Path] = []

    def install_catalogues(settings: object, onnx_path: Path, model_dir: Path, assets: object
                           ) -> dict[str, object]:
        embedded.append(onnx_path)
        return {"food": {}}

    monkeypatch.setattr(install, "install_catalogues", install_catalogues)
    assert install.main(["--onnx", str(onnx), "--report", str(report), "--dim", "384"]) == 0
    model = tmp_path / "repo" / "interest_encoder"
    assert (model / "1" / "model.onnx").read_bytes() == b"weights"
    assert (model / "1" / "model.py").exists()
    parse((model / "config.pbtxt").read_text())
    version = json.loads((model / "VERSION.json").read_text())
    assert version["model_version"]
    assert embedded == [onnx] and version["catalogues"] == {"food": {}}, "catalogues embedded by this model"
