from __future__ import annotations

import numpy as np

from interest_core.text import clean_text, scrub_pii
from interest_core.tokenizer import BehaviourTokenizer


def test_clean_text_unescapes_html_and_squashes_whitespace() -> None:
    assert clean_text("Salt &amp;amp; Pepper  <br/> Grinder\n Set ") == "Salt & Pepper Grinder Set"
    assert clean_text("   ") == ""


def test_scrub_pii_on_realistic_strings() -> None:
    text = ("Gift for jane.doe@example.com, call +1 (555) 123-4567 or 020 7946 0958, "
            "paid with 4111 1111 1111 1111 - Lodge 10.25 Inch Cast Iron Skillet, 12 oz")
    out = scrub_pii(text)
    assert "jane.doe" not in out and "4111" not in out and "555" not in out and "7946" not in out
    assert "[email]" in out and "[number]" in out and "[phone]" in out
    assert "Lodge 10.25 Inch Cast Iron Skillet, 12 oz" in out, "product facts survive"


def test_tokenizer_pads_only_to_longest_and_truncates() -> None:
    tok = BehaviourTokenizer(max_len=16)
    ids, mask = tok(["tea", "a much longer product title with several words in it"])
    assert ids.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape[1] == int(mask[1].sum()) < 16
    assert mask[0].sum() == 3  # [CLS] tea [SEP]
    long_ids, _ = tok(["word " * 100])
    assert long_ids.shape == (1, 16)


def test_run_many_sorts_rows_into_chunks_and_restores_order() -> None:
    """Rows from ragged requests are regrouped by length; each request gets its own rows back."""
    from interest_model.onnx_runtime import OnnxInterestRuntime

    calls: list[tuple[int, ...]] = []

    def fake_run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(ids.shape)
        # a row's "embedding": (sum of its real token ids, real length) - padding-invariant
        return np.stack([(ids * mask).sum(axis=1), mask.sum(axis=1)], axis=1).astype(np.float32)

    runtime = OnnxInterestRuntime.__new__(OnnxInterestRuntime)
    runtime.run = fake_run  # type: ignore[method-assign,assignment]
    tok = BehaviourTokenizer(max_len=32)
    texts = [["tea", "a long title with many many words in it"], ["x"], ["mid length text", "b c", "d"]]
    requests = [tok(t) for t in texts]
    outs = runtime.run_many(requests, chunk_rows=2)
    assert [o.shape[0] for o in outs] == [2, 1, 3]
    for req, out in zip(requests, outs):
        ids, mask = req
        assert out[:, 1].tolist() == mask.sum(axis=1).tolist()
        assert out[:, 0].tolist() == (ids * mask).sum(axis=1).tolist()
    assert len(calls) == 3 and all(rows <= 2 for rows, _ in calls)
    widths = [w for _, w in calls]
    assert widths == sorted(widths), "chunks go from short to long rows"
