"""Quantize the fp32 ONNX interest model to INT8 with explicit, symmetric Q/DQ nodes.

Calibrated on real behaviour texts from the configured platforms (ONNX Runtime static
quantizer, QDQ format). Weight MatMuls are quantized except the FFN down-projections;
activation x activation MatMuls (attention) stay fp32 (see `fp32_matmuls`). Before
calibration, the outlier channels of LayerNorm outputs are moved into the weights they feed
(`quantize.smooth`, SmoothQuant), which an fp32 run leaves unchanged. The result
runs on ONNX Runtime (CPU) and feeds a strongly typed TensorRT build (GPU) unchanged.

    python -m quantize.int8 --fp32 artifacts/model.fp32.onnx --out artifacts/model.int8.onnx
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from interest_core.config import load_settings
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.corpus import CALIBRATION_POOL, HELD_OUT_TEXTS, behaviour_texts, calibration_pool_size
from interest_model.onnx_runtime import cpu_has_vnni
from quantize.calibration import write_record
from quantize.smooth import DEFAULT_ALPHA, smooth

log = logging.getLogger("quantize.int8")

# ONNX Runtime's quantizer warns on the root logger, twice per model, that the graph was not run
# through its `quant_pre_process`. Measured on the trained model (same calibration texts and
# gate): with shape inference only, or with its optimizations too, the held-out cosine was 0.9954
# against 0.9955 without, at 258-260 against 270-278 texts/s; and its symbolic shape inference
# fails on this graph unless told to merge dimensions. So it is skipped, and said once, in words.
PRE_PROCESS_ADVICE = ("Please consider to run pre-processing before quantization",
                      "Please consider pre-processing before quantization")


@contextmanager
def without_pre_process_advice() -> Iterator[None]:
    """While quantizing: ONNX Runtime's pre-processing advice, which it logs on the root logger,
    is dropped there."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PRE_PROCESS_ADVICE)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class TextCalibrationReader(CalibrationDataReader):
    """Feeds tokenized real texts in batches of `batch` (dicts of int64 [B, T])."""

    def __init__(self, texts: list[str], tokenizer: BehaviourTokenizer, batch: int = 16) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            self._encode(texts[i : i + batch], tokenizer) for i in range(0, len(texts), batch)
        )

    @staticmethod
    def _encode(texts: list[str], tokenizer: BehaviourTokenizer) -> dict[str, np.ndarray]:
        # Histogram calibrators stack every batch: pad all of them to the same length.
        ids, mask = tokenizer(texts)
        pad = tokenizer.max_len - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=tokenizer.pad_id)
        return {"input_ids": ids, "attention_mask": np.pad(mask, ((0, 0), (0, pad)))}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def fp32_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes to keep in fp32: activation x activation (attention scores and context),
    and those fed by GELU (FFN down-projections), whose long-tailed input symmetric
    per-tensor INT8 resolves badly (mean cosine 0.84 -> 0.985 when they are kept fp32)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}

    def after_gelu(tensor: str, depth: int = 4) -> bool:
        node = producer.get(tensor)
        if node is None or depth == 0:
            return False
        if node.op_type in ("Gelu", "FastGelu", "Erf"):
            return True
        return any(after_gelu(i, depth - 1) for i in node.input if i not in constants)

    keep = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        activations = [i for i in node.input if i not in constants]
        if len(activations) == 2 or any(after_gelu(i) for i in activations):
            keep.append(node.name)
    return keep


ACTIVATIONS = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def smoothed_copy(fp32: Path, texts: list[str], tokenizer: BehaviourTokenizer, alpha: float,
                  folder: Path) -> Path:
    """`fp32` with its LayerNorm outliers moved into the weights, written into `folder`."""
    model = onnx.load(str(fp32))

    def batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        for i in range(0, len(texts), 32):
            ids, mask = tokenizer(texts[i : i + 32])
            yield {"input_ids": ids, "attention_mask": mask}, mask.astype(bool)

    count = smooth(model, batches(), alpha)
    log.info("smoothed %d LayerNorm outputs (migration strength %.2f) over %d texts",
             count, alpha, len(texts))
    path = folder / "model.smoothed.fp32.onnx"
    onnx.save(model, str(path))
    return path


def weight_bits_for(activations: str, vnni: bool) -> int:
    """8-bit weights, except uint8 activations on a CPU without VNNI: there ONNX Runtime
    multiplies u8 x s8 with VPMADDUBSW, which adds adjacent products into int16 and saturates
    past 32767 (ONNX Runtime's quantization docs advise `reduce_range` for it). Simulated on
    this model's real activations, 8-bit weights saturate up to 3e-5 of the pairs, up to 4%
    error in an FFN up-projection's output; with |w| <= 64, 255 * 64 * 2 = 32640 cannot. On
    VNNI CPUs the 7 bits would only cost accuracy: valid users' kitchen -> food NDCG@10 was
    +0.2% of fp32 with 8-bit weights and -1.0% with 7 (paired standard error 0.5%)."""
    return 7 if activations == "uint8" and not vnni else 8


def quantize_int8(
    fp32: Path, out: Path, texts: list[str], max_seq_len: int, activations: str = "int8",
    smooth_alpha: float = DEFAULT_ALPHA, weight_bits: int = 8,
) -> Path:
    """Symmetric Q/DQ: weights int8 per channel; activations int8 (TensorRT) or uint8 with
    zero point 128 (ONNX Runtime on x86 runs u8 x s8 MatMuls on its fast path). A
    `smooth_alpha` of 0 quantizes the graph as exported, without smoothing.

    `weight_bits` 7 quantizes weights to |w| <= 64 (ONNX Runtime's `reduce_range`); see
    `weight_bits_for`."""
    tokenizer = BehaviourTokenizer(max_len=max_seq_len)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        source = fp32
        if smooth_alpha > 0:
            source = smoothed_copy(fp32, texts, tokenizer, smooth_alpha, Path(scratch))
        excluded = fp32_matmuls(source)
        log.info("calibrating on %d texts; %s activations, %d-bit weights; keeping %d MatMuls in fp32 "
                 "(not pre-processed by ONNX Runtime's quant_pre_process: it measured no gain here)",
                 len(texts), activations, weight_bits, len(excluded))
        with without_pre_process_advice():
            quantize_static(
                str(source),
                str(out),
                TextCalibrationReader(texts, tokenizer),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=excluded,
                per_channel=True,
                reduce_range=weight_bits == 7,
                activation_type=ACTIVATIONS[activations],
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantize.int8",
        description="Static INT8 quantization (explicit symmetric Q/DQ) calibrated on real "
        "behaviour texts from the dataset.",
    )
    parser.add_argument("--fp32", type=Path, required=True, help="fp32 ONNX from quantize.export")
    parser.add_argument("--out", type=Path, required=True, help="INT8 Q/DQ ONNX to write")
    parser.add_argument("--calib-texts", type=int, default=CALIBRATION_POOL,
                        help=f"calibration texts (default and most: {CALIBRATION_POOL}; half of the titles "
                             "for a pair with fewer, so that quantize.validate keeps unseen ones; the "
                             "texts used are listed in <out>.calibration.json)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed for calibration texts")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config whose platforms' titles calibrate (default config/default.yaml)")
    parser.add_argument(
        "--activations", choices=sorted(ACTIVATIONS), default="int8",
        help="int8: what TensorRT builds (GPU); uint8 (zero point 128): 1.5x faster on ONNX "
        "Runtime x86 CPUs, same accuracy (default int8)",
    )
    parser.add_argument(
        "--smooth-alpha", type=float, default=DEFAULT_ALPHA,
        help="SmoothQuant migration strength: how much of the LayerNorm outputs' outlier channels "
        f"moves into the weights before calibration (default {DEFAULT_ALPHA}; 0 turns it off; "
        "held-out cosine to fp32 here: 0.9808 off, 0.9953 at 0.5)",
    )
    parser.add_argument(
        "--weight-bits", choices=("auto", "8", "7"), default="auto",
        help="auto (default): 8, but 7 for uint8 activations when this CPU has no VNNI, whose "
        "u8 x s8 instruction saturates int16 with 8-bit weights; build the engine on the CPU "
        "that serves it, or pass 7 for one that may lack VNNI",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.smooth_alpha <= 1:
        parser.error("--smooth-alpha must be within [0, 1]")
    if not args.fp32.exists():
        parser.error(f"--fp32 {args.fp32} does not exist: run `python -m quantize.export` first")
    if args.calib_texts < 16:
        parser.error("--calib-texts must be at least 16")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    pool = calibration_pool_size(settings)
    if pool < args.calib_texts:
        why = (f"{CALIBRATION_POOL} is the most this tool calibrates on"
               if pool == CALIBRATION_POOL else
               f"the configured platforms hold fewer than {CALIBRATION_POOL + HELD_OUT_TEXTS} titles, "
               "and half of them stay unseen for quantize.validate")
        log.warning("calibrating on %d texts, not %d: %s", pool, args.calib_texts, why)
    texts = behaviour_texts(settings, min(args.calib_texts, pool), seed=args.seed)
    bits = (weight_bits_for(args.activations, cpu_has_vnni()) if args.weight_bits == "auto"
            else int(args.weight_bits))
    quantize_int8(args.fp32, args.out, texts, settings.max_seq_len, args.activations, args.smooth_alpha, bits)
    record = write_record(args.out, texts, args.seed)
    log.info("wrote %s (%.1f MB) and its calibration record %s", args.out,
             args.out.stat().st_size / 1e6, record.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
