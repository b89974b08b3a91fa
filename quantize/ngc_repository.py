"""Model repositories that the NGC `tritonserver` container serves with its own backends, no
python backend: CPU through the ONNX Runtime backend (`onnxruntime_onnx`, the validated INT8
Q/DQ ONNX as is) and GPU through the TensorRT backend (`tensorrt_plan`).

    var/ngc/model_repository_cpu/interest_encoder/{config.pbtxt, 1/model.onnx}
    var/ngc/model_repository_gpu/interest_encoder/{config.pbtxt, 1/model.plan}
    var/ngc/MANIFEST.json   what was written, the model version, and whether the plan is there

Input and output names, types and shapes in each config.pbtxt are read from the ONNX graph
and checked against interest_core.contract. The plan is built only where TensorRT and a GPU
are (`make engine TARGET=gpu`); without one the GPU config is written and the manifest says
the plan is missing.

No ragged batching: Triton's ONNX Runtime and TensorRT backends hand a ragged input to the
model as one flattened 1-D tensor plus batch_input offsets, which a [batch, seq] BERT graph
does not accept. Each request keeps its own [seq] shape; the dynamic batcher joins requests
of equal length, and the warmups cover the sequence-length buckets that a gateway padding to
buckets would send (docs/deployment.md, "Batching").

    python -m quantize.ngc_repository --onnx artifacts/model.int8-uint8.onnx \
        --report artifacts/validation-uint8.json [--plan artifacts/model.plan] [--out var/ngc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from interest_core.config import ROOT, load_settings
from interest_core.contract import ATTENTION_MASK, INPUT_IDS, OUTPUT, file_digest

DEFAULT_OUT = ROOT / "var" / "ngc"
# Sequence lengths the warmup runs (and the buckets a bucketing gateway would pad to); capped
# at the served max_seq_len, which is always a bucket itself.
DEFAULT_BUCKETS = (16, 32, 64)
MANIFEST = "MANIFEST.json"

# ONNX TensorProto element type -> Triton config data type (the ones a BERT encoder uses).
_ONNX_TO_TRITON = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64"}


class ContractError(ValueError):
    """The ONNX graph does not have the tensors the gateway sends and reads."""


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it: dims without the batch axis (-1 = dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def dim(self) -> int:
        return self.outputs[0].dims[-1]


def read_io(onnx_path: Path) -> ModelIO:
    """Inputs and outputs of the ONNX graph (initializers excluded), batch axis dropped; raises
    ContractError unless they are input_ids, attention_mask int64 [B, T] -> interest_embedding
    float32 [B, D] with a static D."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensors(values: object) -> tuple[Tensor, ...]:
        out = []
        for v in values:  # type: ignore[attr-defined]
            if v.name in initializers:
                continue
            kind = v.type.tensor_type.elem_type
            if kind not in _ONNX_TO_TRITON:
                raise ContractError(f"{onnx_path}: tensor {v.name!r} has ONNX element type {kind}, "
                                    f"which this repository generator does not map")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            if not shape:
                raise ContractError(f"{onnx_path}: tensor {v.name!r} has no batch axis")
            out.append(Tensor(v.name, _ONNX_TO_TRITON[kind], tuple(shape[1:])))
        return tuple(out)

    io = ModelIO(tensors(graph.input), tensors(graph.output))
    want_in = [Tensor(INPUT_IDS, "TYPE_INT64", (-1,)), Tensor(ATTENTION_MASK, "TYPE_INT64", (-1,))]
    if sorted(io.inputs, key=lambda t: t.name) != sorted(want_in, key=lambda t: t.name):
        raise ContractError(f"{onnx_path}: inputs are {list(io.inputs)}, the gateway sends {want_in} "
                            f"(int64 [batch, seq], names from interest_core.contract)")
    if (len(io.outputs) != 1 or io.outputs[0].name != OUTPUT or io.outputs[0].data_type != "TYPE_FP32"
            or len(io.outputs[0].dims) != 1 or io.outputs[0].dims[0] <= 0):
        raise ContractError(f"{onnx_path}: outputs are {list(io.outputs)}, the gateway reads one "
                            f"{OUTPUT!r} float32 [batch, D] with a static D")
    return io


def buckets_for(max_seq: int, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The warmup sequence lengths: the buckets below max_seq, then max_seq itself."""
    return (*sorted(b for b in set(buckets) if 0 < b < max_seq), max_seq)


def dynamic_batching(target: str) -> str:
    """The batcher's block. On CPU it sends a request to an idle instance at once (no queue
    delay): with a delay, two requests arriving together were merged into one batch on one
    single-threaded instance while the other idled, so two concurrent 5-text EncodeInterests
    took as long as ten texts on one core (docs/capacity.md#the-batchers-queue-delay). Batches
    still form while both instances are busy. On GPU one instance keeps a short delay
    (unmeasured here)."""
    delay_us = 0 if target == "cpu" else 2000
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}"


def render_ngc_config(name: str, target: str, io: ModelIO, max_batch: int, max_seq: int,
                      instances: int = 2, threads: int = 1,
                      buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> str:
    """config.pbtxt for Triton's own backend: `onnxruntime_onnx` on KIND_CPU (target cpu) or
    `tensorrt_plan` on KIND_GPU (target gpu), dynamic batching, one warmup per length bucket."""
    if target not in ("cpu", "gpu"):
        raise ValueError(f"target must be cpu or gpu, not {target!r}")

    def block(t: Tensor) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        return f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {dims} ] }}'

    platform = "onnxruntime_onnx" if target == "cpu" else "tensorrt_plan"
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}",
             "input [", ",\n".join(block(t) for t in io.inputs), "]",
             "output [", ",\n".join(block(t) for t in io.outputs), "]",
             # Equal-shape requests only (no ragged batching: see the module docstring).
             dynamic_batching(target)]
    if target == "cpu":
        # One single-threaded ONNX Runtime session per instance, one instance per core: what
        # the python-backend engine measured fastest on 2 cores (quantize/install.py).
        lines.append(f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]")
        lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                  for k, v in (("intra_op_thread_count", threads), ("inter_op_thread_count", 1))]
    else:
        lines.append("instance_group [ { count: 1 kind: KIND_GPU } ]")
    warmups = []
    for seq in buckets_for(max_seq, buckets):
        tensors = "\n".join(
            f'    inputs {{ key: "{t.name}" value: {{ data_type: {t.data_type} dims: [ {seq} ] '
            f"zero_data: true }} }}" for t in io.inputs)
        warmups.append(f'  {{\n    name: "seq_{seq}"\n    batch_size: 1\n{tensors}\n  }}')
    lines.append("model_warmup [\n" + ",\n".join(warmups) + "\n]")
    return "\n".join(lines) + "\n"


def write_repositories(onnx_path: Path, out: Path, *, name: str, max_batch: int, max_seq: int,
                       plan: Path | None = None, instances: int = 2, threads: int = 1) -> dict[str, object]:
    """Write both repositories under `out` (replacing earlier ones) and MANIFEST.json; returns
    the manifest. The GPU repository gets the plan only when `plan` exists."""
    import onnx

    io = read_io(onnx_path)
    header = onnx.load(str(onnx_path), load_external_data=False)
    # The container's ONNX Runtime must support these (opset 17 / IR 8 today: any 1.14+).
    opsets = {o.domain or "ai.onnx": o.version for o in header.opset_import}
    manifest: dict[str, object] = {"model_version": file_digest(onnx_path), "source": str(onnx_path),
                                   "dim": io.dim, "max_batch_size": max_batch, "max_seq_len": max_seq,
                                   "onnx_ir_version": header.ir_version, "onnx_opsets": opsets}
    for target, artifact, filename in (("cpu", onnx_path, "model.onnx"), ("gpu", plan, "model.plan")):
        model_dir = out / f"model_repository_{target}" / name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(
            render_ngc_config(name, target, io, max_batch, max_seq, instances, threads))
        entry: dict[str, object] = {"repository": str(model_dir.parent), "artifact": None}
        if artifact is not None and artifact.exists():
            shutil.copyfile(artifact, model_dir / "1" / filename)
            entry["artifact"] = str(model_dir / "1" / filename)
            entry["artifact_digest"] = file_digest(artifact)
        else:
            entry["missing"] = (f"1/{filename}: no TensorRT plan was built here (TensorRT and a GPU are "
                                f"needed: make engine TARGET=gpu, with the TensorRT of the Triton image)")
        manifest[target] = entry
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.ngc_repository",
                                     description="Write the NGC Triton model repositories (CPU + GPU).")
    parser.add_argument("--onnx", type=Path, required=True, help="validated ONNX (INT8 Q/DQ)")
    parser.add_argument("--report", type=Path, required=True, help="report from quantize.validate")
    parser.add_argument("--plan", type=Path, default=None, help="TensorRT plan built from that ONNX")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the repositories go")
    parser.add_argument("--instances", type=int, default=2, help="ONNX Runtime instances (CPU)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per CPU instance")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (model name, limits)")
    args = parser.parse_args(argv)
    if not args.onnx.exists():
        parser.error(f"--onnx {args.onnx} does not exist: run `make engine` first")
    if not args.report.exists():
        parser.error(f"{args.report} is missing: run quantize.validate first")
    if not json.loads(args.report.read_text()).get("passed"):
        print(f"[ngc] REFUSED: {args.report} says the model failed its accuracy gate")
        return 1
    settings = load_settings(args.config)
    try:
        manifest = write_repositories(args.onnx, args.out, name=settings.model_name,
                                      max_batch=settings.triton_max_batch_size,
                                      max_seq=settings.max_seq_len, plan=args.plan,
                                      instances=args.instances, threads=args.threads)
    except ContractError as exc:
        print(f"[ngc] REFUSED: {exc}")
        return 1
    for target in ("cpu", "gpu"):
        entry = manifest[target]
        assert isinstance(entry, dict)
        state = entry["artifact"] or f"config only, MISSING {entry['missing']}"
        print(f"[ngc] {target}: {entry['repository']} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
