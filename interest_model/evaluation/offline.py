"""`make eval` (offline part): the trained model against the five baselines on the test users.

    python -m interest_model.evaluation.offline --dataset amazon-food-kitchen \
        --checkpoint models/amazon-food-kitchen \
        --new-items-checkpoint models/amazon-food-kitchen-new-items --int8 artifacts/model.int8-uint8.onnx

Task 1 (warm catalogue), both directions: each test user's source-platform history ranks the
whole target catalogue; the same users are also reported by the length of their source history
(tasks "<direction>/history-1-2", "history-3-5", "history-6+": where co-occurrence has little
to sum). Task 2 (new items): with each new-items checkpoint, whose training never saw its own seeded
20% of the target items, only those items are ranked, for the test users who took one; the
splits' (split, user) rows are pooled into one task.
Few overlap: with each checkpoint trained with --overlap-fraction F (1%, 5%, 20% of the
training users on both platforms, seeded; single-platform users kept), task 1 again, both
directions, every baseline fitted on the same reduced training users (tasks
"<direction>/overlap-5%"); 100% is task 1 itself.
Baselines are fitted on the same training users (new items removed in task 2); those with
hyperparameters are tuned on the validation users of the same task (TUNING), as the model's
are, and the chosen values recorded (`tuned`). A method whose every score on a task is
round-off (metrics.ROUND_OFF) is said to be one that cannot score those items (`note`).
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
from interest_model.backbone import HEAD_CONFIG, HEAD_WEIGHTS, TUNED_LAYERS
from interest_model.datasets import InteractionData, load_dataset
from interest_model.evaluation import (
    BASELINES,
    Baseline,
    PairTrainData,
    bootstrap_ci,
    evaluate,
    make_baseline,
    paired_ratio_ci,
    tune,
)
from interest_model.evaluation.blend import search_blend
from interest_model.evaluation.metrics import METRICS, ROUND_OFF, expected_random
from interest_model.evaluation.populations import describe
from interest_model.features import catalogue_features
from interest_model.tasks import (
    Direction,
    few_overlap,
    mask_to,
    model_scores,
    pairs_of,
    restrict,
    user_rows,
)

log = logging.getLogger("interest.eval")

# Test users by the number of source-platform items in their history: (least, most; None = no cap).
HISTORY_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 2), (3, 5), (6, None))
# Each tuned baseline's grid, in stages: each stage's options are tried on top of the best so
# far (EMCDR: the factor rank first, then the mapping's L2 strength at that rank).
TUNING: dict[str, list[list[dict[str, Any]]]] = {
    "popularity": [[{"users": u} for u in ("all", "both")]],
    "cooccurrence": [[{"beta": b} for b in (0.0, 0.25, 0.5, 0.75)]],
    "text_ridge": [[{"alpha": a} for a in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)]],
    "emcdr": [[{"rank": r} for r in (32, 64, 128)], [{"alpha": a} for a in (0.1, 1.0, 10.0, 100.0)]],
}
ROUND_OFF_NOTE = (f"cannot score these items: every score is round-off (|s| < {ROUND_OFF:g}), so it is "
                  "reported at a uniformly random ranking's expected value")


def head_embeddings(features: dict[str, np.ndarray], checkpoint: Path, data: InteractionData,
                    cache_dir: Path) -> dict[str, np.ndarray]:
    """The checkpoint's fp32 item embeddings per platform [n, D]: normalise(features @ H^T) for
    a frozen backbone; for one whose layers were tuned, every title through the checkpoint's own
    encoder (cached by the tuned weights' digest)."""
    import torch

    from interest_core.contract import file_digest
    from interest_model.backbone import InterestEncoder
    from interest_model.features import embed_titles, titles_digest

    weights = [f for f in (checkpoint / TUNED_LAYERS, *checkpoint.glob("*.safetensors"),
                           *checkpoint.glob("pytorch_model.bin"), checkpoint / HEAD_WEIGHTS) if f.exists()]
    if weights and weights[0].name != HEAD_WEIGHTS:  # tuned layers or a whole backbone
        key = "".join(file_digest(f)[:12] for f in weights)
        encoder: InterestEncoder | None = None
        tuned = {}
        for p in features:
            path = cache_dir / f"tuned-{key}-{titles_digest(data.catalogues[p].titles)}-{p}.npy"
            if not path.exists():
                encoder = encoder or InterestEncoder.load(checkpoint)
                cache_dir.mkdir(parents=True, exist_ok=True)
                np.save(path, embed_titles(encoder, data.catalogues[p].titles, progress=f"{p} (tuned)"))
            tuned[p] = np.load(path)
        return tuned
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
            rel: Sequence[Sequence[int]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The four metrics (means) plus a 95% bootstrap interval of NDCG@10, and the per-user
    values of each metric [U] (for `target_ratio` and the history subsets)."""
    per_user = evaluate(score, len(hist), rel, per_user=True)
    return summary(per_user), per_user


def summary(per_user: dict[str, np.ndarray]) -> dict[str, Any]:
    """Means of per-user metric values and the 95% bootstrap interval of NDCG@10."""
    means = {k: round(float(np.mean(v)), 5) for k, v in per_user.items()}
    lo, hi = bootstrap_ci(per_user["ndcg@10"])
    return {**means, "ndcg@10_ci95": [round(lo, 5), round(hi, 5)]}


def target_ratio(methods: dict[str, Any], per_user: dict[str, dict[str, np.ndarray]],
                 baseline: str | None = None) -> dict[str, Any] | None:
    """NDCG@10 of the ranking that is served (INT8 when measured, else fp32) over the best
    baseline's (or `baseline`'s), with a paired 95% bootstrap interval over the same users: how
    firmly a "k x the best baseline" target is met or missed, which two separate intervals
    cannot say."""
    ours = next((m for m in ("model_int8", "model_fp32") if m in per_user), None)
    baselines = [m for m in BASELINES if m in per_user and baseline in (None, m)]
    if ours is None or not baselines:
        return None
    best = max(baselines, key=lambda m: methods[m]["ndcg@10"])
    if not methods[best]["ndcg@10"]:
        return None
    lo, hi = paired_ratio_ci(per_user[ours]["ndcg@10"], per_user[best]["ndcg@10"])
    return {"method": ours, "baseline": best,
            "ratio": round(methods[ours]["ndcg@10"] / methods[best]["ndcg@10"], 3),
            "ci95": [round(lo, 3), round(hi, 3)]}


def tuned_baseline(name: str, train: PairTrainData, validate: Callable[[Baseline], float]
                   ) -> tuple[Baseline, dict[str, Any] | None]:
    """`name` fitted on `train`, with the TUNING options that `validate` (NDCG@10 on validation
    users) scores highest; the record of what was tried (None: nothing to tune)."""
    stages = TUNING.get(name)
    if not stages:
        return make_baseline(name).fit(train), None
    chosen: dict[str, Any] = {}
    tried: list[tuple[dict[str, Any], float]] = []
    model: Baseline | None = None
    for stage in stages:
        model, results = tune(name, train, [{**chosen, **options} for options in stage], validate)
        tried += results
        chosen = max(results, key=lambda r: r[1])[0]
    assert model is not None
    log.info("  %s tuned on validation users: %s (%s)", name, chosen,
             ", ".join(f"{o} {v:.4f}" for o, v in tried))
    return model, {"chosen": chosen,
                   "tried": [{"options": o, "valid_ndcg@10": round(v, 5)} for o, v in tried]}


def history_subsets(hist: Sequence[Sequence[int]], methods: dict[str, Any],
                    per_user: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """The task's users split by the length of their source history (HISTORY_BUCKETS), each
    subset with every method's metrics over its users and the paired ratio of the served
    ranking to the subset's best baseline; keyed "history-1-2", "history-6+"."""
    lengths = np.array([len(h) for h in hist])
    out: dict[str, dict[str, Any]] = {}
    for least, most in HISTORY_BUCKETS:
        keep = (lengths >= least) & (lengths <= (most if most is not None else lengths.max(initial=0)))
        if not keep.any():
            continue
        sub = {name: {m: values[m][keep] for m in METRICS} for name, values in per_user.items()}
        sub_methods = {name: summary(values) for name, values in sub.items()}
        for name, body in sub_methods.items():
            if "note" in methods[name]:
                body["note"] = methods[name]["note"]
        task: dict[str, Any] = {"users": int(keep.sum()), "history_items": [least, most],
                                "methods": sub_methods}
        ratio = target_ratio(sub_methods, sub)
        if ratio is not None:
            task["ratio_ci95"] = ratio
        out[f"history-{least}-{most}" if most is not None else f"history-{least}+"] = task
    return out


def run_task(data: InteractionData, d: Direction, features: dict[str, np.ndarray],
             models: dict[str, Callable[[Sequence[Sequence[int]]], np.ndarray]],
             removed: dict[str, np.ndarray], only: np.ndarray | None,
             per_user_out: dict[str, dict[str, np.ndarray]] | None = None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """All baselines and `models` on the test users of direction `d` (restricted to `only`);
    and the same users split by history length (history_subsets). Each method's per-user
    values also go to `per_user_out` when given (to pool several new-items splits)."""
    test = user_rows(data.split("test"), data.platforms, {})
    hist, rel = pairs_of(test, d)
    valid_hist, valid_rel = pairs_of(user_rows(data.split("valid"), data.platforms, {}), d)
    if only is not None:
        hist, rel = restrict(hist, rel, only)
        valid_hist, valid_rel = restrict(valid_hist, valid_rel, only)
    train = pair_train_data(data, d, removed, features)

    def validate(model: Baseline) -> float:
        def score(users: list[int]) -> np.ndarray:
            s = model.score([valid_hist[u] for u in users])
            return s if only is None else mask_to(s, only)
        return float(evaluate(score, len(valid_hist), valid_rel)["ndcg@10"])

    methods: dict[str, Any] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    scorers: dict[str, Callable[[Sequence[Sequence[int]]], np.ndarray]] = {}
    tuned: dict[str, Any] = {}
    for name in BASELINES:
        started = time.monotonic()
        model, record = tuned_baseline(name, train, validate) if valid_hist else (
            make_baseline(name).fit(train), None)
        scorers[name] = model.score
        if record is not None:
            tuned[name] = record
        log.info("  %s fitted (%.0f s)", name, time.monotonic() - started)
    scorers.update(models)
    for name, scorer in scorers.items():
        largest = [0.0]  # the largest finite |score| it gave: round-off only, or real scores?

        def score(users: list[int], scorer: Callable[..., np.ndarray] = scorer,
                  largest: list[float] = largest) -> np.ndarray:
            s = scorer([hist[u] for u in users])
            s = s if only is None else mask_to(s, only)
            finite = np.abs(s[np.isfinite(s)])
            largest[0] = max(largest[0], float(finite.max(initial=0.0)))
            return s
        methods[name], per_user[name] = measure(score, hist, rel)
        if largest[0] < ROUND_OFF:  # its tie order would be one random draw: take the expectation
            ranked = len(only) if only is not None else len(data.catalogues[d.target])
            per_user[name] = expected_random(ranked, [len(r) for r in rel])
            methods[name] = {**summary(per_user[name]), "note": ROUND_OFF_NOTE}
            log.info("  %s: %s", name, ROUND_OFF_NOTE)
        log.info("  %-16s NDCG@10 %.4f  HR@10 %.3f  Recall@50 %.3f  MRR %.4f", name,
                 methods[name]["ndcg@10"], methods[name]["hr@10"], methods[name]["recall@50"],
                 methods[name]["mrr"])
    if per_user_out is not None:
        per_user_out.update(per_user)
    out: dict[str, Any] = {"users": len(hist), "validation_users": len(valid_hist), "methods": methods,
                           "tuned": tuned}
    for key, against in (("ratio_ci95", None), ("cooccurrence_ratio_ci95", "cooccurrence")):
        ratio = target_ratio(methods, per_user, against)
        if ratio is not None:
            out[key] = ratio
            log.info("  %s / %s NDCG@10: %.3f (paired 95%% CI %.3f-%.3f)", ratio["method"],
                     ratio["baseline"], ratio["ratio"], *ratio["ci95"])
    return out, history_subsets(hist, methods, per_user)


def blend_ceiling(assets: RankingAssets, items: dict[str, np.ndarray], d: Direction,
                  data: InteractionData) -> dict[str, Any]:
    """The served blend's weights searched on the test users themselves (the grid training
    searches on the valid users), with `items` as model_fp32 embeds them. No choice of weights on
    that grid made before test can beat it, so a missed target below it needs a model that ranks
    better (or a signal the blend lacks), not better weights. A diagnostic: it chooses nothing
    that is served."""
    served = assets.blend[d.key]
    best, figures = search_blend(assets, items, d, user_rows(data.split("test"), data.platforms, {}))
    log.info("  blend ceiling: cooc %g pop %g on test gives %.4f (served weights cooc %g pop %g)",
             best.cooc, best.pop, figures["blend"], served.cooc, served.pop)
    return {"of": "model_fp32", "ndcg@10": round(figures["blend"], 5),
            "test_weights": {"cooc": best.cooc, "pop": best.pop},
            "served_weights": {"cooc": served.cooc, "pop": served.pop}}


def task_users(data: InteractionData, d: Direction, only: np.ndarray) -> list[int]:
    """Test users (indices into data.split("test")) that `run_task` scores for direction `d`
    restricted to `only`, in its order: items on both platforms, one of them in `only`."""
    test = user_rows(data.split("test"), data.platforms, {})
    keep = set(only.tolist())
    return [n for n, (h, t) in enumerate(zip(test[d.source], test[d.target]))
            if h and t and keep.intersection(t)]


def clustered(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct user, the sum of their rows' values and their number of rows: resampling
    users with these keeps each user's rows together (a user can take new items of several
    splits), and sum / count over a resample is the pooled mean."""
    ids, index = np.unique(users, return_inverse=True)
    return np.bincount(index, weights=values, minlength=len(ids)), np.bincount(index, minlength=len(ids))


def new_items_task(data: InteractionData, features: dict[str, np.ndarray], none: dict[str, np.ndarray],
                   checkpoints: Sequence[Path], cache: Path) -> tuple[str, dict[str, Any]]:
    """Task 2 over every new-items split: each checkpoint held out its own seeded share of the
    target items. Each split's test users who took one of its new items are scored (baselines
    refitted and tuned without that split's items), then the (split, user) rows are pooled: the
    task's metrics are means over all rows; its intervals and paired ratio resample users, each
    with all their rows (a user may count in several splits). Each split's own figures are
    under `splits`."""
    pooled: dict[str, list[dict[str, np.ndarray]]] = {}
    users: list[np.ndarray] = []
    splits: list[dict[str, Any]] = []
    notes: dict[str, list[str]] = {}
    name = ""
    for ckpt in checkpoints:
        report = json.loads((ckpt / "train_report.json").read_text())
        target = report["new_items"]["platform"]
        pos = data.catalogues[target].index()
        new = np.array(sorted(pos[i] for i in report["new_items"]["items"]), dtype=np.int64)
        source = next(p for p in data.platforms if p != target)
        d = Direction(source, target)
        name = name or f"{d}/new-items"
        if f"{d}/new-items" != name:
            raise ValueError(f"{ckpt} holds out {target} items, the other splits another platform's")
        log.info("task %s, split seed %s: %d new %s items", name, report["seed"], len(new), target)
        assets = RankingAssets.load(ckpt / ASSETS_FILE)
        emb = head_embeddings(features, ckpt, data, cache)
        cold = {"model_fp32": ranking(emb, assets.migration[d.key], d, None)}
        per_user: dict[str, dict[str, np.ndarray]] = {}
        body, _ = run_task(data, d, features, cold, {**none, target: new}, new, per_user)
        users.append(np.array(task_users(data, d, new), dtype=np.int64))
        assert len(users[-1]) == body["users"]
        for method, values in per_user.items():
            pooled.setdefault(method, []).append(values)
        for method, m in body["methods"].items():
            if "note" in m:
                notes.setdefault(method, []).append(m["note"])
        splits.append({"checkpoint": ckpt.name, "seed": report["seed"], "new_items": len(new),
                       "users": body["users"], "validation_users": body["validation_users"],
                       "tuned": body["tuned"],
                       "ndcg@10": {m: v["ndcg@10"] for m, v in body["methods"].items()},
                       **({"ratio_ci95": body["ratio_ci95"]} if "ratio_ci95" in body else {})})
    who = np.concatenate(users)
    rows = {m: {k: np.concatenate([v[k] for v in parts]) for k in METRICS}
            for m, parts in pooled.items() if len(parts) == len(checkpoints)}
    methods: dict[str, Any] = {}
    for m, values in rows.items():
        lo, hi = paired_ratio_ci(*clustered(values["ndcg@10"], who))
        methods[m] = {**{k: round(float(np.mean(v)), 5) for k, v in values.items()},
                      "ndcg@10_ci95": [round(lo, 5), round(hi, 5)]}
        if len(notes.get(m, [])) == len(checkpoints):  # round-off on every split
            methods[m]["note"] = notes[m][0]
    out: dict[str, Any] = {"users": len(np.unique(who)), "user_rows": len(who),
                           "validation_users": splits[0]["validation_users"],
                           "new_items": round(float(np.mean([s["new_items"] for s in splits]))),
                           "methods": methods, "splits": splits,
                           "tuned": splits[0]["tuned"] if len(splits) == 1 else {}}
    # The pooled means' ratio, its interval over users: each user's row sums, resampled together.
    ratio = target_ratio(methods, {m: {"ndcg@10": clustered(v["ndcg@10"], who)[0]} for m, v in rows.items()})
    if ratio is not None:
        out["ratio_ci95"] = ratio
        log.info("  %s over %d split(s), %d rows of %d users: %s / %s NDCG@10 %.3f (paired 95%% CI "
                 "%.3f-%.3f)", name, len(splits), len(who), out["users"], ratio["method"], ratio["baseline"],
                 ratio["ratio"], *ratio["ci95"])
    return name, out


def overlap_label(fraction: float) -> str:
    """The task suffix of a few-overlap run: "overlap-5%" for 0.05."""
    return f"overlap-{100 * fraction:g}%"


def overlap_tasks(data: InteractionData, features: dict[str, np.ndarray], checkpoint: Path,
                  cache: Path) -> dict[str, Any]:
    """Task 1, both directions, with the training users that `checkpoint` was trained on: its
    `overlap_fraction` of the users on both platforms (the same seeded subset). The baselines
    are fitted and tuned on those users too; `model_fp32` is the checkpoint's served ranking
    (its cosine + its own collaborative blend), `model_only_fp32` its cosine alone."""
    report = json.loads((checkpoint / "train_report.json").read_text())
    fraction = float(report.get("overlap_fraction", 1.0))
    if fraction >= 1.0:
        log.warning("%s was trained on every overlap user (no overlap_fraction < 1 in its "
                    "train_report.json): not a few-overlap checkpoint, skipped (100%% is task 1)", checkpoint)
        return {}
    reduced = few_overlap(data, fraction, int(report["seed"]))
    kept = sum(1 for u in reduced.split("train") if sum(1 for p in data.platforms if u.on(p)) >= 2)
    assets = RankingAssets.load(checkpoint / ASSETS_FILE)
    emb = head_embeddings(features, checkpoint, data, cache)
    none = {p: np.array([], dtype=np.int64) for p in data.platforms}
    out: dict[str, Any] = {}
    for d in (Direction(*data.platforms[:2]), Direction(*reversed(data.platforms[:2]))):
        name = f"{d}/{overlap_label(fraction)}"
        log.info("task %s: %d training users on both platforms kept", name, kept)
        w = assets.migration[d.key]
        models = {"model_only_fp32": ranking(emb, w, d, None), "model_fp32": ranking(emb, w, d, assets)}
        out[name], _ = run_task(reduced, d, features, models, none, None)
        out[name]["blend_ceiling"] = blend_ceiling(assets, emb, d, reduced)
        out[name].update({"overlap_fraction": fraction, "overlap_train_users": kept})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.evaluation.offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-food-kitchen")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="`make train` checkpoint (the served model)")
    parser.add_argument("--new-items-checkpoint", type=Path, action="append", default=[], metavar="DIR",
                        help="checkpoint trained with --new-items-fraction (task 2); repeat for each "
                             "seeded split (pooled); none = skip task 2")
    parser.add_argument("--overlap-checkpoint", type=Path, action="append", default=[], metavar="DIR",
                        help="checkpoint trained with --overlap-fraction (the few-overlap tasks); "
                             "repeat for each fraction")
    parser.add_argument("--int8", type=Path, default=None, help="INT8 ONNX exported from --checkpoint")
    parser.add_argument("--out", type=Path, default=Path("var/eval/offline.json"))
    args = parser.parse_args(argv)
    for ckpt in (args.checkpoint, *args.new_items_checkpoint, *args.overlap_checkpoint):
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
    fp32 = head_embeddings(features, args.checkpoint, data, cache)
    int8 = onnx_embeddings(args.int8, data, cache) if args.int8 else None
    none = {p: np.array([], dtype=np.int64) for p in data.platforms}
    tasks: dict[str, Any] = {}
    directions = (Direction(*data.platforms[:2]), Direction(*reversed(data.platforms[:2])))
    for d in directions:
        log.info("task %s (warm catalogue)", d)
        w = assets.migration[d.key]

        models = {"model_only_fp32": ranking(fp32, w, d, None), "model_fp32": ranking(fp32, w, d, assets)}
        if int8 is not None:
            models["model_int8"] = ranking(int8, w, d, assets)
        tasks[str(d)], subsets = run_task(data, d, features, models, none, None)
        tasks[str(d)]["blend_ceiling"] = blend_ceiling(assets, fp32, d, data)
        tasks.update({f"{d}/{name}": body for name, body in subsets.items()})
    if args.new_items_checkpoint:
        name, body = new_items_task(data, features, none, args.new_items_checkpoint, cache)
        tasks[name] = body
    for ckpt in args.overlap_checkpoint:
        tasks.update(overlap_tasks(data, features, ckpt, cache))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = {split: user_rows(data.split(split), data.platforms, none) for split in ("train", "valid", "test")}
    n_items = {p: len(data.catalogues[p]) for p in data.platforms}
    summary = {"dataset": data.name, "checkpoint": str(args.checkpoint),
               "int8": str(args.int8) if args.int8 else None, "tasks": tasks,
               "populations": {str(d): describe(rows["train"], {s: rows[s] for s in ("valid", "test")},
                                                d, n_items) for d in directions}}
    args.out.write_text(json.dumps(summary, indent=1))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
