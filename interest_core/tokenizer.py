"""Tokenization with HF `tokenizers`: truncate to max length, pad only to the batch's longest.

The packaged tokenizer.json pads every text to 128 tokens; behaviour texts are far shorter,
so padding is switched off and done per batch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from interest_core.contract import backbone_dir


class BehaviourTokenizer:
    """texts -> (input_ids, attention_mask), both int64 [B, T] with T = longest text in batch."""

    def __init__(self, tokenizer_file: Path | None = None, max_len: int = 64) -> None:
        path = tokenizer_file or backbone_dir() / "tokenizer.json"
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_len)
        self.max_len = max_len
        self.pad_id = self._tok.token_to_id("[PAD]") or 0

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        # encode_batch's thread pool costs more CPU than it saves on the few texts of a request.
        texts = list(texts)
        encodings = (self._tok.encode_batch(texts) if len(texts) > 64
                     else [self._tok.encode(t) for t in texts])
        longest = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask
