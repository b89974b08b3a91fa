"""Migration mapping: carry a profile from one platform's interest space to another's.

A mapping is a matrix W (D x D) per (source, target) platform pair, applied as W @ p. With
no trained mapping the spaces are shared and W is the identity. Trained mappings are read
from an .npz with arrays named `<source>-><target>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from interest_core.ranking.linalg import small_matvec


class MigrationMap:
    """Maps unit profile vectors float32 [D] between platforms and blends several sources."""

    def __init__(self, dim: int, matrices: Mapping[tuple[str, str], np.ndarray] | None = None) -> None:
        self.dim = dim
        self._matrices = dict(matrices or {})
        for (src, dst), w in self._matrices.items():
            if w.shape != (dim, dim):
                raise ValueError(f"mapping {src}->{dst} has shape {w.shape}, expected ({dim}, {dim})")

    @classmethod
    def load(cls, dim: int, path: Path | None) -> MigrationMap:
        if path is None or not path.exists():
            return cls(dim)
        with np.load(path) as npz:
            matrices = {tuple(name.split("->", 1)): npz[name].astype(np.float32) for name in npz.files}
        return cls(dim, matrices)  # type: ignore[arg-type]

    def kind(self, source: str, target: str) -> str:
        return "learned" if (source, target) in self._matrices else "identity"

    def apply(self, vector: np.ndarray, source: str, target: str) -> np.ndarray:
        if source == target or (source, target) not in self._matrices:
            return vector
        return small_matvec(self._matrices[(source, target)], vector)

    def migrate(self, vectors: Mapping[str, tuple[np.ndarray, int]], target: str) -> np.ndarray:
        """Weighted (by event count) mean of each platform's mapped vector, unit norm [D]."""
        total = np.zeros(self.dim, dtype=np.float32)
        for platform, (vec, weight) in vectors.items():
            total += weight * self.apply(vec, platform, target)
        norm = float(np.linalg.norm(total))
        return total / norm if norm > 0 else total
