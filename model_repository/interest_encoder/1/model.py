"""Triton python-backend adapter for the interest encoder: ONNX Runtime on CPU.

Thin by design: the padding/batching logic lives in interest_model.onnx_runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from interest_core.contract import ATTENTION_MASK, INPUT_IDS, OUTPUT
from interest_model.onnx_runtime import OnnxInterestRuntime
from quantize.triton_compat import pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.runtime = OnnxInterestRuntime(
            version_dir / params.get("onnx_file", "model.onnx"),
            intra_op_threads=int(params.get("intra_op_threads", "0")),
            allow_spinning=params.get("allow_spinning", "1") == "1",
        )
        self.max_seq_len = int(params.get("max_seq_len", "128"))
        self.chunk_rows = int(params.get("chunk_rows", "16"))
        self.vocab_size = int(params.get("vocab_size", "30522"))

    def _check(self, ids: np.ndarray, mask: np.ndarray) -> str | None:
        if ids.ndim != 2 or ids.shape != mask.shape:
            return f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal [batch, seq]"
        if ids.shape[1] == 0 or ids.shape[1] > self.max_seq_len:
            return f"sequence length {ids.shape[1]} outside 1..{self.max_seq_len}"
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            return f"input_ids outside the vocabulary (0..{self.vocab_size - 1})"
        return None

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[int] = []
        inputs: list[tuple[np.ndarray, np.ndarray]] = []
        for n, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, INPUT_IDS).as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, ATTENTION_MASK).as_numpy()
            problem = self._check(ids, mask)
            if problem:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                )
            else:
                good.append(n)
                inputs.append((ids, mask))
        if inputs:
            for n, out in zip(good, self.runtime.run_many(inputs, self.chunk_rows)):
                responses[n] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(OUTPUT, out)]
                )
        return responses
