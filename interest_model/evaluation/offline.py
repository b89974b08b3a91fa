"""`make eval` (offline part): the trained model against the five baselines on the test users.

    python -m interest_model.evaluation.offline --dataset amazon-food-kitchen \
        --checkpoint models/amazon-food-kitchen \
        --new-items-checkpoint models/amazon-food-kitchen-new-items --int8 artifacts/model.int8-uint8.onnx

Task 1 (warm catalogue), both directions: each test user's source-platform history ranks the
whole target catalogue. Task 2 (new items): with the new-items checkpoint, whose training
never saw a seeded 20% of the target items, only those items are ranked, for the test users
who took one. Baselines are fitted on the same training users (new items removed in task 2).
`model_fp32` / `model_int8` are the ranking the gateway serves (model cosine + trained
collaborative blend) computed offline with fp32 and INT8 item embeddings; `model_only_fp32`
is the cosine alone. Writes a JSON that `devtools.served_eval` completes with the served run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interest_core.config import load_settings
from interest_core.contract import ASSETS_FILE
from interest_core.ranking.assets import RankingAssets
from interest_model.backbone import HEAD_CONFIG, HEAD_WEIGHTS
from interest_model.datasets import InteractionData, load_dataset
from interest_model.evaluation import (
    BASELINES,
    PairTrainData,
    bootstrap_ci,
    evaluate,
    make_baseline,
    paired_ratio_ci,
)
from interest_model.features import catalogue_features
from interest_model.tasks import Direction, mask_to, model_scores, pairs_of, restrict, user_rows

log = logging.getLogger("interest.eval")


def head_embeddings(features: dict[str, np.ndarray], checkpoint: Path) -> dict[str, np.ndarray]:
    """The checkpoint's fp32 item embeddings: normalise(features @ H^T), per platform [n, D]."""
    import torch

    cfg = json.loads((checkpoint / HEAD_CONFIG).read_text())
    if not cfg.get("out_features"):
        return features
    state = torch.load(checkpoint / HEAD_WEIGHTS, map_location="cpu")
    w, b = state["weight"].numpy(), state["bias"].numpy()
    out = {}
    for p, f in features.items():
        e = f @ w.T + b
        out[p] = (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return out


def onnx_embeddings(onnx: Path, data: InteractionData, cache_dir: Path) -> dict[str, np.ndarray]:
    """Item embeddings of every catalogue through an ONNX model on ONNX Runtime, cached by file digest."""
    from interest_core.contract import file_digest
    from interest_core.tokenizer import BehaviourTokenizer
    from interest_model.onnx_runtime import OnnxInterestRuntime

    digest = file_digest(onnx)
    runtime: OnnxInterestRuntime | None = None
    tok = BehaviourTokenizer()
    out = {}
    for p in data.platforms:
        path = cache_dir / f"onnx-{digest}-{p}.npy"
        if path.exists():
            out[p] = np.load(path)
            continue
        runtime = runtime or OnnxInterestRuntime(onnx, intra_op_threads=0)
        titles = data.catalogues[p].titles
        started = time.monotonic()
        parts = []
        for first in range(0, len(titles), 512):
            parts.extend(runtime.run_many([tok(titles[first : first + 512])], chunk_rows=64))
            log.info("%s: %s titles through %s (%.0f/s)", p, f"{min(first + 512, len(titles))}/{len(titles)}",
                     onnx.name, min(first + 512, len(titles)) / (time.monotonic() - started))
        out[p] = np.concatenate(parts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, out[p])
    return out


def ranking(items: dict[str, np.ndarray], w: np.ndarray, d: Direction, assets: RankingAssets | None
            ) -> Callable[[Sequence[Sequence[int]]], np.ndarray]:
    """Scores [U, n_target] of histories: the model's cosine, plus the assets' blend if given."""
    def score(histories: Sequence[Sequence[int]]) -> np.ndarray:
        s = model_scores(items, w, d, histories)
        return s if assets is None else s + assets.collaborative({d.source: histories}, d.target)
    return score


def pair_train_data(data: InteractionData, d: Direction, removed: dict[str, np.ndarray],
                    features: dict[str, np.ndarray]) -> PairTrainData:
    """Training users of `data` as the baselines' input for direction `d` (new items removed)."""
    rows = user_rows(data.split("train"), data.platforms, removed)
    src, tgt = rows[d.source], rows[d.target]
    return PairTrainData(
        n_source=len(data.catalogues[d.source]), n_target=len(data.catalogues[d.target]),
        pairs=[(s, t) for s, t in zip(src, tgt) if s and t],
        source_only=[s for s, t in zip(src, tgt) if s and not t],
        target_only=[t for s, t in zip(src, tgt) if t and not s],
        source_emb=features[d.source], target_emb=features[d.target],
    )


def measure(score: Callable[[list[int]], np.ndarray], hist: Sequence[Sequence[int]],
            rel: Sequence[Sequence[int]]) -> tuple[dict[str, Any], np.ndarray]:
    """The four metrics (means) plus a 95% bootstrap interval of NDCG@10, and the per-user
    NDCG@10 values [U] (for `target_ratio`)."""
    per_user = evaluate(score, len(hist), rel, per_user=True)
    means = {k: round(float(np.mean(v)), 5) for k, v in per_user.items()}
    lo, hi = bootstrap_ci(per_user["ndcg@10"])
    return {**means, "ndcg@10_ci95": [round(lo, 5), round(hi, 5)]}, per_user["ndcg@10"]


def target_ratio(methods: dict[str, Any], per_user: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """NDCG@10 of the ranking that is served (INT8 when measured, else fp32) over the best
    baseline's, with a paired 95% bootstrap interval over the same users: how firmly a
    "k x the best baseline" target is met or missed, which two separate intervals cannot say."""
    ours = next((m for m in ("model_int8", "model_fp32") if m in per_user), None)
    baselines = [m for m in BASELINES if m in per_user]
    if ours is None or not baselines:
        return None
    best = max(baselines, key=lambda m: methods[m]["ndcg@10"])
    if not methods[best]["ndcg@10"]:
        return None
    lo, hi = paired_ratio_ci(per_user[ours], per_user[best])
    return {"method": ours, "baseline": best,
            "ratio": round(methods[ours]["ndcg@10"] / methods[best]["ndcg@10"], 3),
            "ci95": [round(lo, 3), round(hi, 3)]}


def run_task(data: InteractionData, d: Direction, features: dict[str, np.ndarray],
             models: dict[str, Callable[[Sequence[Sequence[int]]], np.ndarray]],
             removed: dict[str, np.ndarray], only: np.ndarray | None) -> dict[str, Any]:
    """All baselines and `models` on the test users of direction `d` (restricted to `only`)."""
    test = user_rows(data.split("test"), data.platforms, {})
    hist, rel = pairs_of(test, d)
    if only is not None:
        hist, rel = restrict(hist, rel, only)
    train = pair_train_data(data, d, removed, features)
    methods: dict[str, Any] = {}
    per_user: dict[str, np.ndarray] = {}
    scorers: dict[str, Callable[[Sequence[Sequence[int]]], np.ndarray]] = {}
    for name in BASELINES:
        started = time.monotonic()
        scorers[name] = make_baseline(name).fit(train).score
        log.info("  %s fitted (%.0f s)", name, time.monotonic() - started)
    scorers.update(models)
    for name, scorer in scorers.items():
        def score(users: list[int], scorer: Callable[..., np.ndarray] = scorer) -> np.ndarray:
            s = scorer([hist[u] for u in users])
            return s if only is None else mask_to(s, only)
        methods[name], per_user[name] = measure(score, hist, rel)
        log.info("  %-16s NDCG@10 %.4f  HR@10 %.3f  Recall@50 %.3f  MRR %.4f", name,
                 methods[name]["ndcg@10"], methods[name]["hr@10"], methods[name]["recall@50"],
                 methods[name]["mrr"])
    out: dict[str, Any] = {"users": len(hist), "methods": methods}
    ratio = target_ratio(methods, per_user)
    if ratio is not None:
        out["ratio_ci95"] = ratio
        log.info("  %s / %s NDCG@10: %.3f (paired 95%% CI %.3f-%.3f)", ratio["method"],
                 ratio["baseline"], ratio["ratio"], *ratio["ci95"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.evaluation.offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-food-kitchen")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="`make train` checkpoint (the served model)")
    parser.add_argument("--new-items-checkpoint", type=Path, default=None,
                        help="checkpoint trained with --new-items-fraction (task 2); none = skip task 2")
    parser.add_argument("--int8", type=Path, default=None, help="INT8 ONNX exported from --checkpoint")
    parser.add_argument("--out", type=Path, default=Path("var/eval/offline.json"))
    args = parser.parse_args(argv)
    for ckpt in filter(None, (args.checkpoint, args.new_items_checkpoint)):
        if not (ckpt / ASSETS_FILE).exists():
            parser.error(f"{ckpt} has no {ASSETS_FILE}: run `make train` first")
    if args.int8 is not None and not args.int8.exists():
        parser.error(f"--int8 {args.int8} does not exist: run `make engine` first")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    data = load_dataset(settings, args.dataset)
    cache = settings.var_dir / "features" / data.name
    features = catalogue_features(data.catalogues, cache)
    assets = RankingAssets.load(args.checkpoint / ASSETS_FILE)
    fp32 = head_embeddings(features, args.checkpoint)
    int8 = onnx_embeddings(args.int8, data, cache) if args.int8 else None
    none = {p: np.array([], dtype=np.int64) for p in data.platforms}
    tasks: dict[str, Any] = {}
    for d in (Direction(*data.platforms[:2]), Direction(*reversed(data.platforms[:2]))):
        log.info("task %s (warm catalogue)", d)
        w = assets.migration[d.key]

        models = {"model_only_fp32": ranking(fp32, w, d, None), "model_fp32": ranking(fp32, w, d, assets)}
        if int8 is not None:
            models["model_int8"] = ranking(int8, w, d, assets)
        tasks[str(d)] = run_task(data, d, features, models, none, None)
    if args.new_items_checkpoint is not None:
        report = json.loads((args.new_items_checkpoint / "train_report.json").read_text())
        target = report["new_items"]["platform"]
        pos = data.catalogues[target].index()
        new = np.array(sorted(pos[i] for i in report["new_items"]["items"]), dtype=np.int64)
        source = next(p for p in data.platforms if p != target)
        d = Direction(source, target)
        log.info("task %s/new-items: %d new %s items", d, len(new), target)
        new_assets = RankingAssets.load(args.new_items_checkpoint / ASSETS_FILE)
        emb = head_embeddings(features, args.new_items_checkpoint)
        w = new_assets.migration[d.key]
        cold = {"model_fp32": ranking(emb, w, d, None)}
        tasks[f"{d}/new-items"] = run_task(data, d, features, cold, {**none, target: new}, new)
        tasks[f"{d}/new-items"]["new_items"] = len(new)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": data.name, "checkpoint": str(args.checkpoint),
               "int8": str(args.int8) if args.int8 else None, "tasks": tasks}
    args.out.write_text(json.dumps(summary, indent=1))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
