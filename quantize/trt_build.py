"""Build a strongly typed TensorRT engine from the Q/DQ ONNX (GPU machines only).

INT8 comes from the Q/DQ nodes themselves (TensorRT >= 10 strongly typed networks; the
INT8 calibrator and FP16/INT8 builder flags are deprecated in 10.12 and gone in 11).
Exit status 3 means "cannot build here" (no tensorrt module or no GPU), with the reason.

    python -m quantize.trt_build --onnx artifacts/model.int8.onnx --out artifacts/model.plan
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from interest_core.config import load_settings

log = logging.getLogger("quantize.trt_build")
CANNOT_BUILD_HERE = 3


def why_not_here() -> str | None:
    """None if TensorRT and an NVIDIA GPU are present, else the reason in one line."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` Python package is not installed (pip install tensorrt on a GPU machine)"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return "nvidia-smi lists no GPU"
    return None


def build_engine(onnx_path: Path, out: Path, max_batch: int, max_seq: int) -> Path:
    import tensorrt as trt

    logger: Any = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1), (max(1, max_batch // 2), min(32, max_seq)), (max_batch, max_seq))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantize.trt_build",
        description="Build a strongly typed TensorRT plan from the Q/DQ ONNX; the optimization "
        "profile spans batch 1..max-batch and sequence 1..max-seq (the config.pbtxt's limits).",
    )
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    settings = load_settings()
    parser.add_argument("--max-batch", type=int, default=settings.triton_max_batch_size,
                        help="= config.pbtxt max_batch_size (default from settings: %(default)s)")
    parser.add_argument("--max-seq", type=int, default=settings.max_seq_len,
                        help="longest token sequence (default from settings: %(default)s)")
    args = parser.parse_args(argv)
    if not args.onnx.exists():
        parser.error(f"--onnx {args.onnx} does not exist")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = why_not_here()
    if reason:
        print(f"[trt_build] cannot build a TensorRT engine on this machine: {reason}")
        return CANNOT_BUILD_HERE
    build_engine(args.onnx, args.out, args.max_batch, args.max_seq)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
