"""Who the held-out users are, beside who trained the model: per direction and split, the users
on both platforms, how long their histories are and how popular their items were in training.

`make eval` reports it because epochs, blend weights and the baselines' settings are all chosen
on the validation users: where those are heavier or more mainstream than the test users, a gain
chosen on valid shrinks on test (docs/EXPERIMENTS.md, "Valid users are not like test users").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interest_core.ranking.sparse import binary_matrix
from interest_model.tasks import Direction, pairs_of

Rows = dict[str, list[list[int]]]  # per platform, each user's items (same user order everywhere)


def takers(rows: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """How many of `rows`' users took each item, int64 [n_items] (as the popularity baseline
    counts them)."""
    return np.asarray(binary_matrix(rows, n_items).sum(axis=0), dtype=np.int64).ravel()


def describe(train: Rows, splits: dict[str, Rows], d: Direction,
             n_items: dict[str, int]) -> list[dict[str, Any]]:
    """One row per split ("train" included) of the users with items on both platforms of `d`:
    their number, mean source and target items per user, the median number of training users
    (all of them, single-platform ones included) who took each of their source and target
    items, and the share of their target items that no training user on both platforms took
    (co-occurrence cannot reach those)."""
    taken = {p: takers(train[p], n_items[p]) for p in (d.source, d.target)}
    reachable = takers(pairs_of(train, d)[1], n_items[d.target]) > 0
    out = []
    for name, rows in {"train": train, **splits}.items():
        hist, rel = pairs_of(rows, d)
        if not hist:
            continue
        src = np.asarray([i for h in hist for i in h], dtype=np.int64)
        tgt = np.asarray([i for r in rel for i in r], dtype=np.int64)
        out.append({
            "split": name, "users": len(hist),
            "source_items_per_user": round(len(src) / len(hist), 2),
            "target_items_per_user": round(len(tgt) / len(hist), 2),
            "median_training_takers_source": float(np.median(taken[d.source][src])),
            "median_training_takers_target": float(np.median(taken[d.target][tgt])),
            "target_unreachable_share": round(float((~reachable[tgt]).mean()), 4),
        })
    return out


def markdown(populations: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The report's section: a table per direction."""
    lines = ["## Who the users are", "",
             "Held-out and training users on both platforms of each direction. Epochs, blend weights "
             "and the baselines' settings are chosen on the valid users: where they differ from the "
             "test users, a gain chosen on valid may not hold on test. Takers: training users who took "
             "the item; unreachable: target items no training user on both platforms took.", ""]
    for direction, rows in populations.items():
        if not rows:
            continue  # no user on both platforms of that direction in any split
        lines += [f"**{direction}**", "",
                  "| split | users | source items / user | target items / user | median takers, source "
                  "items | median takers, target items | target items unreachable |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['split']} | {r['users']} | {r['source_items_per_user']:.1f} | "
                  f"{r['target_items_per_user']:.1f} | {r['median_training_takers_source']:g} | "
                  f"{r['median_training_takers_target']:g} | {100 * r['target_unreachable_share']:.1f}% |"
                  for r in rows]
        lines.append("")
    return lines
