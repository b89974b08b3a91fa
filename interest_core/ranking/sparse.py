"""Users' item lists as a sparse binary matrix: the one builder evaluation, training and the
ranking assets share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def binary_matrix(rows: Sequence[Sequence[int]], n_cols: int) -> sp.csr_matrix:
    """Lists of item indices -> binary float32 CSR [len(rows), n_cols]; bad indices raise."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    cols = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    if cols.size and (cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"item index outside 0..{n_cols - 1}")
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    m = sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr), shape=(len(rows), n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
