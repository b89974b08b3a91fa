from __future__ import annotations

from pathlib import Path

import pytest

from devtools.triton_launcher import TritonStartError, start_triton
from interest_core.config import load_settings
from quantize import trt_build


def test_yaml_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpc_port: 6000\nmax_k: 50\n")
    monkeypatch.setenv("INTEREST_MAX_K", "70")
    s = load_settings(cfg)
    assert s.grpc_port == 6000 and s.max_k == 70
    assert set(s.platforms) == {"food", "kitchen"}


def test_bad_config_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_settings(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("grcp_port: 1\n")
    with pytest.raises(ValueError, match="grcp_port"):
        load_settings(typo)


def test_triton_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    s = load_settings(model_repository=tmp_path / "empty", var_dir=tmp_path / "var")
    with pytest.raises(TritonStartError, match="run `make engine` first"):
        start_triton(s)


def test_trt_build_says_why_not_here(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    reason = trt_build.why_not_here()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present")
    assert trt_build.main(["--onnx", str(onnx), "--out", str(tmp_path / "m.plan")]) == 3
    assert "cannot build a TensorRT engine on this machine" in capsys.readouterr().out


def test_triton_refuses_a_port_already_in_use(tmp_path: Path) -> None:
    """Never mistake someone else's server on our port for the Triton we started."""
    import socket

    (tmp_path / "repo" / "interest_encoder").mkdir(parents=True)
    (tmp_path / "repo" / "interest_encoder" / "config.pbtxt").write_text('name: "interest_encoder"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = load_settings(model_repository=tmp_path / "repo", var_dir=tmp_path / "var",
                          triton_grpc_port=port)
        with pytest.raises(TritonStartError, match=f"gRPC port {port} is already in use"):
            start_triton(s)
