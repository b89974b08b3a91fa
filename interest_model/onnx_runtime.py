"""ONNX Runtime execution of the interest model for Triton's python backend (CPU).

Requests arrive with their own sequence lengths (ragged batching); they are padded to the
longest, run as one batch, and split back per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from interest_core.contract import ATTENTION_MASK, INPUT_IDS, OUTPUT

log = logging.getLogger("interest.runtime")



def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 or AVX) dot-product instructions; False when
    unknown (no /proc/cpuinfo, or a CPU without x86 `flags`, such as ARM), the safe answer
    for `quantize.int8.weight_bits_for` though on ARM its 7-bit weights only cost a little."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def saturating_weights(onnx_path: Path) -> bool:
    """Whether a Q/DQ model pairs uint8 activations with 8-bit weights (some |w| > 64): on an
    x86 CPU without VNNI, ONNX Runtime's u8 x s8 products can then saturate int16."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {i.name: i for i in graph.initializer}
    dequantized = [constants[n.input[0]] for n in graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    int8 = [numpy_helper.to_array(t) for t in dequantized if t.data_type == onnx.TensorProto.INT8]
    has_u8 = any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in constants
                 and constants[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in graph.node)
    return has_u8 and any(int(np.abs(w.astype(np.int32)).max()) > 64 for w in int8)


def warn_if_saturating(onnx_path: Path, vnni: bool) -> bool:
    """Log (and return) whether this CPU may saturate the model's u8 x s8 products."""
    if vnni or not saturating_weights(onnx_path):
        return False
    log.warning("%s has 8-bit weights for uint8 activations, built on a CPU with VNNI; this CPU has "
                "none, so ONNX Runtime's u8 x s8 products can saturate int16 and the embeddings "
                "lose accuracy: rebuild the engine here (`make engine`, 7-bit weights)", onnx_path)
    return True


class OnnxInterestRuntime:
    """Runs interest_embedding = model(input_ids, attention_mask) on ONNX Runtime (CPU)."""

    def __init__(self, onnx_path: Path, intra_op_threads: int = 0, allow_spinning: bool = True) -> None:
        if not onnx_path.exists():
            raise FileNotFoundError(f"model file {onnx_path} is missing: run `make engine`")
        warn_if_saturating(onnx_path, cpu_has_vnni())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spin-waiting worker threads steal the cores Triton and the gateway need (2-core box).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 [B, T] x2 -> float32 [B, D]."""
        (out,) = self._session.run(
            [OUTPUT], {INPUT_IDS: input_ids.astype(np.int64), ATTENTION_MASK: attention_mask.astype(np.int64)}
        )
        return np.asarray(out, dtype=np.float32)

    def run_many(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray]], chunk_rows: int = 16
    ) -> list[np.ndarray]:
        """Several requests' (ids, mask) -> per-request [b_i, D] outputs.

        Rows of all requests are sorted by real length and run in chunks of `chunk_rows`, each
        padded only to its own longest row: padding every row to the batch's longest wasted
        about half of the compute on these short, varied texts.
        """
        rows_ids = [row for ids, _ in requests for row in ids]
        rows_mask = [row for _, mask in requests for row in mask]
        lengths = np.array([int(m.sum()) for m in rows_mask])
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(order), chunk_rows):
            chunk = order[start : start + chunk_rows]
            width = max(int(lengths[chunk].max()), 1)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for n, r in enumerate(chunk):
                row = rows_ids[r][:width]
                ids[n, : len(row)] = row
                mask[n, : len(row)] = rows_mask[r][:width]
            result = self.run(ids, mask)
            if out is None:
                out = np.empty((len(order), result.shape[1]), dtype=np.float32)
            out[chunk] = result
        assert out is not None
        sizes = [int(ids.shape[0]) for ids, _ in requests]
        return list(np.split(out, np.cumsum(sizes)[:-1]))
