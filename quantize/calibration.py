"""The record of which texts calibrated an INT8 model, kept beside it, so that
`quantize.validate` gates it only on texts it never saw, whatever `--seed` or
`--calib-texts` `quantize.int8` was given."""

from __future__ import annotations

import json
from pathlib import Path


def record_path(model: Path) -> Path:
    """`artifacts/model.int8-uint8.onnx` -> `artifacts/model.int8-uint8.calibration.json`."""
    return model.with_suffix(".calibration.json")


def write_record(model: Path, texts: list[str], seed: int) -> Path:
    path = record_path(model)
    path.write_text(json.dumps({"model": model.name, "seed": seed, "texts": texts}, indent=0))
    return path


def read_record(model: Path) -> list[str] | None:
    """The calibration texts of `model`, or None when no record is beside it."""
    path = record_path(model)
    if not path.exists():
        return None
    return list(json.loads(path.read_text())["texts"])
