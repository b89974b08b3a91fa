"""The serving process loads neither torch, ONNX Runtime nor plotting: the gateway's import,
started in a fresh interpreter, is checked module by module (import-linter checks the same
rules statically, in `make lint`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from interest_core.config import ROOT

HEAVY = ("torch", "onnxruntime", "onnx", "matplotlib", "transformers", "sklearn")
OTHER_LAYERS = ("interest_model", "quantize", "devtools", "bench")


def modules_after_import(module: str) -> set[str]:
    """Top-level packages in sys.modules after `import module` in a fresh interpreter."""
    code = (f"import json, sys; import {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                         text=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_gateway_imports_no_torch_onnxruntime_or_plotting() -> None:
    loaded = modules_after_import("gateway.server")
    assert "grpc" in loaded and "interest_core" in loaded, "the check sees what the gateway loads"
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not loaded & set(OTHER_LAYERS), sorted(loaded & set(OTHER_LAYERS))


def test_the_check_catches_a_heavy_import() -> None:
    """The same check on the offline side does see torch, so the test above can fail."""
    assert "torch" in modules_after_import("interest_model.backbone")


def test_import_contracts_hold() -> None:
    """import-linter's contracts in pyproject.toml: layers, forbidden packages, no cycles."""
    lint = Path(sys.executable).parent / "lint-imports"  # installed beside this interpreter
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
