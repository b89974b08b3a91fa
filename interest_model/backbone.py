"""The BERT interest model: all-MiniLM-L6-v2 backbone, masked mean pooling, optional
linear head, L2 normalisation. One definition for training, export and evaluation.

A checkpoint is a directory holding `interest_head.json` (+ `interest_head.pt` when a head
is trained) and either the fine-tuned backbone (`save_pretrained` layout) or, when the
backbone was kept frozen, nothing more: it is then read from the pretrained package. When
only the top layers were tuned (`python -m interest_model.finetune`), `interest_tuned_layers.pt`
holds those layers, laid over the pretrained backbone at load. The pretrained backbone alone is
a valid model with no head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from interest_core.contract import backbone_dir

HEAD_CONFIG = "interest_head.json"
HEAD_WEIGHTS = "interest_head.pt"
# The tuned top layers: {"first": index of the first tuned layer, "layers": [their state dicts]}
TUNED_LAYERS = "interest_tuned_layers.pt"



def is_checkpoint(directory: Path) -> bool:
    """True when `directory` holds a model `InterestEncoder.load` can read."""
    return (directory / "config.json").exists() or (directory / HEAD_CONFIG).exists()


class InterestEncoder(nn.Module):
    """(input_ids, attention_mask) int64 [B, T] -> interest_embedding float32 [B, D], unit L2 norm."""

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def dim(self) -> int:
        if self.head is not None:
            return int(self.head.out_features)
        return int(self.backbone.config.hidden_size)  # type: ignore[union-attr,arg-type]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.head is not None:
            pooled = self.head(pooled)
        return nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)

    @classmethod
    def load(cls, checkpoint: Path | None = None) -> InterestEncoder:
        """Load a trained checkpoint dir, or the pretrained backbone when `checkpoint` is None."""
        from transformers import AutoModel

        source = Path(checkpoint) if checkpoint is not None else backbone_dir()
        if not is_checkpoint(source):
            raise FileNotFoundError(
                f"no model at {source}: expected {HEAD_CONFIG} or config.json and weights there")
        weights = source if (source / "config.json").exists() else backbone_dir()
        backbone = AutoModel.from_pretrained(str(weights))
        if (source / TUNED_LAYERS).exists():
            tuned = torch.load(source / TUNED_LAYERS, map_location="cpu")
            for n, state in enumerate(tuned["layers"]):
                backbone.encoder.layer[tuned["first"] + n].load_state_dict(state)
        head = None
        head_cfg = source / HEAD_CONFIG
        if head_cfg.exists():
            cfg = json.loads(head_cfg.read_text())
            if cfg.get("out_features"):
                head = nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]))
                head.load_state_dict(torch.load(source / HEAD_WEIGHTS, map_location="cpu"))
        model = cls(backbone, head)
        model.eval()
        return model

    def save(self, directory: Path, with_backbone: bool = True, tuned_from: int | None = None) -> None:
        """Write a checkpoint that `load` (and so `make engine`) reads unchanged; a frozen
        backbone (`with_backbone=False`) is not copied but read from the package, and with
        `tuned_from` = n only its layers n.. are written (TUNED_LAYERS)."""
        directory.mkdir(parents=True, exist_ok=True)
        if tuned_from is not None and not with_backbone:
            layers = self.backbone.encoder.layer[tuned_from:]  # type: ignore[union-attr,index]
            torch.save({"first": tuned_from, "layers": [layer.state_dict() for layer in layers]},
                       directory / TUNED_LAYERS)
        else:  # never leave an earlier run's tuned layers to be laid over this model
            (directory / TUNED_LAYERS).unlink(missing_ok=True)
        if with_backbone:
            self.backbone.save_pretrained(str(directory))  # type: ignore[operator]
        cfg: dict[str, int | None] = {"in_features": None, "out_features": None}
        if self.head is not None:
            cfg = {"in_features": self.head.in_features, "out_features": self.head.out_features}
            torch.save(self.head.state_dict(), directory / HEAD_WEIGHTS)
        (directory / HEAD_CONFIG).write_text(json.dumps(cfg))
        if not with_backbone:
            return
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            src = backbone_dir() / name
            if src.exists() and not (directory / name).exists():
                (directory / name).write_bytes(src.read_bytes())
