"""Small products computed without BLAS, for threads that must not wait on a big BLAS call.

OpenBLAS runs any product above a few thousand multiply-adds on its shared thread pool,
and a second thread asking for that pool waits until the first call is done. In the
gateway the catalogue scoring (gateway/scoring.py) holds the pool for milliseconds, so a
384 x 384 migration or a 24 x 384 category product on the event loop would wait for it
(measured with py-spy under load: those two tiny products took 60% of the event loop's time).
NumPy's einsum loops are its own C code: ~50 us for 384 x 384, whatever BLAS is doing.
"""

from __future__ import annotations

import numpy as np


def small_matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """float32 matrix [M, D] . vector [D] outside BLAS: ~50 us at 384 x 384, 0.6 ms at
    10,000 x 384, 6 ms at 50,000 x 384 (BLAS: 0.3 and 1.7 ms, but on the shared pool)."""
    return np.einsum("ij,j->i", matrix, vector.astype(matrix.dtype, copy=False)).astype(
        np.float32, copy=False)
