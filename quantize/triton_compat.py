"""The one place that imports Triton's python-backend utilities (present only inside Triton)."""

from __future__ import annotations

from typing import Any

try:  # pragma: no cover - only importable inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils

    HAS_TRITON = True
except ImportError:  # the core package imports fine without Triton
    pb_utils: Any = None  # type: ignore[no-redef]
    HAS_TRITON = False
