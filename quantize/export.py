"""Export the interest model to ONNX with named tensors and dynamic batch/sequence axes.

    python -m quantize.export --out artifacts/model.fp32.onnx [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from interest_model.backbone import InterestEncoder, is_checkpoint

log = logging.getLogger("quantize.export")

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "interest_embedding"
OPSET = 17


def export_onnx(model: InterestEncoder, out: Path, opset: int = OPSET) -> Path:
    """Trace `model` and write fp32 ONNX: inputs int64 [batch, seq], output float32 [batch, D]."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2088, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask),
            str(out),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                OUTPUT: {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantize.export",
        description="Export the BERT interest model (backbone + pooling + head + L2 norm) to fp32 "
        "ONNX with tensors input_ids/attention_mask -> interest_embedding.",
    )
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="trained checkpoint directory (from `make train`); default: pretrained backbone",
    )
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not is_checkpoint(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint} has neither interest_head.json nor config.json: "
                     "not a model checkpoint (run `make train`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = InterestEncoder.load(args.checkpoint)
    log.info("loaded %s (dim %d)", args.checkpoint or "pretrained all-MiniLM-L6-v2", model.dim)
    export_onnx(model, args.out, args.opset)
    log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
