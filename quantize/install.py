"""Install a validated model into the Triton model repository, with its config.pbtxt, the
trained ranking assets and each configured platform's catalogue (ids, titles, popularity and
the item embeddings computed by this ONNX model: quantize.catalogue), every file's digest
recorded in VERSION.json, so the gateway serves exactly what was installed together.

Refuses unless the validation report says the candidate passed the accuracy gate.
TARGET=cpu: python backend running the ONNX on ONNX Runtime (model.py is committed).
TARGET=gpu: Triton's TensorRT backend running model.plan.

    python -m quantize.install --onnx artifacts/model.int8.onnx \
        --report artifacts/validation.json --target cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from interest_core.config import ROOT, load_settings
from interest_core.contract import ASSETS_FILE, VERSION_FILE, file_digest
from interest_core.ranking.assets import RankingAssets
from quantize.catalogue import CHUNK_ROWS, install_catalogues
from quantize.ngc_repository import dynamic_batching

# The committed python-backend adapter; copied when installing into another repository.
MODEL_PY = ROOT / "model_repository" / "interest_encoder" / "1" / "model.py"

_IO = """input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ]{ragged} }}
]
output [
  {{ name: "interest_embedding" data_type: TYPE_FP32 dims: [ {dim} ] }}
]"""

_WARMUP = """model_warmup [
  {{
    name: "short_behaviour_text"
    batch_size: {batch}
    inputs {{ key: "input_ids" value: {{ data_type: TYPE_INT64 dims: [ 16 ] zero_data: true }} }}
    inputs {{ key: "attention_mask" value: {{ data_type: TYPE_INT64 dims: [ 16 ] zero_data: true }} }}
  }}
]"""


def render_config(
    name: str, target: str, max_batch: int, dim: int, max_seq: int, threads: int, instances: int = 2
) -> str:
    """config.pbtxt text: explicit max_batch_size, dynamic batching, instances, warmup."""
    # No preferred_batch_size: it made the batcher cut batches at that size even with more
    # queued; a full queue now fills max_batch_size rows while the instance is busy.
    batching = dynamic_batching(target)
    if target == "cpu":
        head = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}'
        io = _IO.format(ragged=" allow_ragged_batch: true", dim=dim)
        group = f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"
        params = "\n".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
            for k, v in (("onnx_file", "model.onnx"), ("intra_op_threads", threads),
                         ("allow_spinning", 0), ("chunk_rows", CHUNK_ROWS), ("max_seq_len", max_seq),
                         ("vocab_size", 30522))
        )
    else:
        head = f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch}'
        io = _IO.format(ragged="", dim=dim)
        group = "instance_group [ { count: 1 kind: KIND_GPU } ]"
        params = ""
    parts = [head, io, batching, group, _WARMUP.format(batch=1), params]
    return "\n".join(p for p in parts if p) + "\n"


def output_dim(onnx_path: Path) -> int:
    """Size of `interest_embedding`'s last axis, from the ONNX graph."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = graph.output[0].type.tensor_type.shape.dim
    if not dims or not dims[-1].dim_value:
        raise ValueError(f"{onnx_path}: output has no static embedding size; pass --dim")
    return int(dims[-1].dim_value)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantize.install",
        description="Copy a validated model into model_repository/ and write its config.pbtxt.",
    )
    parser.add_argument("--onnx", type=Path, required=True, help="validated ONNX (INT8 Q/DQ)")
    parser.add_argument("--report", type=Path, required=True, help="report from quantize.validate")
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--plan", type=Path, default=None, help="TensorRT plan (target gpu)")
    parser.add_argument("--dim", type=int, default=None,
                        help="interest embedding size (default: read from the ONNX output shape)")
    # Single-threaded instances, one per core, beat one multi-threaded instance: no intra-op
    # synchronisation, and batches overlap.
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance")
    parser.add_argument("--instances", type=int, default=2, help="model instances (CPU)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint the ONNX came from: its ranking assets (migration, "
                             "blend, categories) are installed beside the model; none = remove stale ones")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config naming the model repository (default config/default.yaml)")
    args = parser.parse_args(argv)
    assets = args.checkpoint / ASSETS_FILE if args.checkpoint is not None else None
    if assets is not None and not assets.exists():
        parser.error(f"--checkpoint {args.checkpoint} has no {ASSETS_FILE}: not a `make train` checkpoint")
    if not args.report.exists():
        parser.error(f"{args.report} is missing: run quantize.validate first")
    report = json.loads(args.report.read_text())
    if not report.get("passed"):
        print(f"[install] REFUSED: {args.report} says the model failed its accuracy gate "
              f"(mean cosine {report.get('mean_cosine')} < {report.get('threshold_mean_cosine')})")
        return 1
    if args.target == "gpu" and (args.plan is None or not args.plan.exists()):
        parser.error("--target gpu needs --plan pointing at a built TensorRT engine")
    if args.dim is None:
        args.dim = output_dim(args.onnx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    model_dir = settings.model_repository / settings.model_name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    # Until the new VERSION.json is written, nothing here is a complete install to serve.
    (model_dir / VERSION_FILE).unlink(missing_ok=True)
    for stale in ("model.onnx", "model.plan"):
        (version_dir / stale).unlink(missing_ok=True)
    artifact = args.onnx if args.target == "cpu" else args.plan
    assert artifact is not None
    dest = version_dir / ("model.onnx" if args.target == "cpu" else "model.plan")
    shutil.copyfile(artifact, dest)
    if args.target == "cpu" and not (version_dir / "model.py").exists():
        shutil.copyfile(MODEL_PY, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(
        render_config(settings.model_name, args.target, settings.triton_max_batch_size,
                      args.dim, settings.max_seq_len, args.threads, args.instances)
    )
    installed_assets = model_dir / ASSETS_FILE
    installed_assets.unlink(missing_ok=True)
    if assets is not None:
        shutil.copyfile(assets, installed_assets)
    started = time.monotonic()
    catalogues = install_catalogues(settings, args.onnx, model_dir,
                                    RankingAssets.load(installed_assets) if assets is not None else None)
    print(f"[install] catalogues of {', '.join(catalogues)} embedded and installed in "
          f"{time.monotonic() - started:.0f}s")
    version = {"model_version": file_digest(args.onnx), "target": args.target,
               "source": str(args.onnx), "dim": args.dim, "validation": report,
               "checkpoint": str(args.checkpoint) if args.checkpoint else None,
               "ranking_assets": file_digest(installed_assets) if assets is not None else None,
               "catalogues": catalogues}
    (model_dir / VERSION_FILE).write_text(json.dumps(version, indent=2))
    print(f"[install] {dest} installed for target {args.target}, model version "
          f"{version['model_version']}" + (f", ranking assets from {args.checkpoint}" if assets else
                                          " (pretrained backbone, no trained ranking assets)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
