"""Name a trained checkpoint's interest categories again with the current naming
(interest_model/categories.py), without training again: the categories themselves (the
classifier), and so every ranking and every probability served, stay exactly as trained.

Each item is put in the category the checkpoint's classifier gives it among its platform's
categories (what the gateway shows as the item's category), from the trained item embeddings
(the frozen backbone's title features through the trained head); each category is then named
from the titles of its items. Only the names in the checkpoint's ranking assets and train
report change. Run `make engine` afterwards to serve them.

    python -m interest_model.rename_categories --checkpoint models/amazon-food-kitchen
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from interest_core.config import load_settings
from interest_core.contract import ASSETS_FILE
from interest_core.ranking.assets import RankingAssets
from interest_model.backbone import InterestEncoder
from interest_model.categories import distinct, name_clusters, platform_categories
from interest_model.datasets import load_dataset
from interest_model.features import catalogue_features

log = logging.getLogger("interest.rename_categories")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.rename_categories", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a `make train` output folder")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the default one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report_path = args.checkpoint / "train_report.json"
    report = json.loads(report_path.read_text())
    assets = RankingAssets.load(args.checkpoint / ASSETS_FILE)
    settings = load_settings(args.config)
    data = load_dataset(settings, report["dataset"])
    features = catalogue_features(data.catalogues, settings.var_dir / "features" / data.name)
    encoder = InterestEncoder.load(args.checkpoint)
    head = encoder.head.weight.detach() if encoder.head is not None else torch.eye(encoder.dim)
    platforms = list(assets.item_ids)
    item_emb = {p: torch.nn.functional.normalize(torch.from_numpy(features[p]) @ head.T, dim=-1).numpy()
                for p in platforms}
    weights, bias = assets.category_weights, assets.category_bias
    if weights is None or bias is None:
        log.error("%s has no interest categories to name", args.checkpoint)
        return 1
    names: list[str] = []
    for p in platforms:  # each platform's categories follow the previous platform's (derive_categories)
        k_p = platform_categories(len(assets.category_names), len(platforms), len(data.catalogues[p]))
        logits = item_emb[p] @ weights[len(names):len(names) + k_p].T + bias[len(names):len(names) + k_p]
        names += name_clusters(data.catalogues[p].titles, logits.argmax(axis=1), k_p)
    names = distinct(names)
    if len(names) != len(assets.category_names):
        log.error("%d names for %d categories: the checkpoint was not made by this code's "
                  "derive_categories; retrain with `make train`", len(names), len(assets.category_names))
        return 1
    for old, new in zip(assets.category_names, names):
        log.info("%-32s -> %s", old, new)
    assets.category_names = names
    assets.save(args.checkpoint / ASSETS_FILE)
    report["categories"] = names
    report_path.write_text(json.dumps(report, indent=1))  # as the trainer writes it
    log.info("%d names written to %s and %s; `make engine` serves them", len(names),
             args.checkpoint / ASSETS_FILE, report_path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
