from __future__ import annotations

import numpy as np
import pytest

from interest_model.evaluation import (
    BASELINES,
    PairTrainData,
    bootstrap_ci,
    evaluate,
    make_baseline,
    paired_ratio_ci,
    rank_metrics,
    tune,
)
from interest_model.evaluation.metrics import tie_keys


def ranked(order: list[int], n: int) -> np.ndarray:
    """float32 [1, n] scores that rank `order` first (in that order), the rest after, no ties."""
    s = -np.arange(n, dtype=np.float32) - 1000.0
    s[order] = np.arange(len(order), 0, -1, dtype=np.float32)
    return s[None, :]


def naive(scores: np.ndarray, relevant: list[list[int]], seed: int) -> dict[str, np.ndarray]:
    """Reference: full sort by (score desc, tie key asc), -inf dropped."""
    keys = tie_keys(scores.shape[1], seed)
    out: dict[str, list[float]] = {"ndcg@10": [], "hr@10": [], "recall@50": [], "mrr": []}
    for row, rel in zip(scores, relevant):
        order = [i for i in np.lexsort((keys, -row)) if row[i] > -np.inf]
        ranks = [order.index(i) + 1 for i in rel if i in order]
        idcg = sum(1 / np.log2(r + 1) for r in range(1, min(len(rel), 10) + 1))
        out["ndcg@10"].append(sum(1 / np.log2(r + 1) for r in ranks if r <= 10) / idcg)
        out["hr@10"].append(float(any(r <= 10 for r in ranks)))
        out["recall@50"].append(sum(r <= 50 for r in ranks) / len(rel))
        out["mrr"].append(1 / min(ranks) if ranks else 0.0)
    return {k: np.array(v) for k, v in out.items()}


def test_perfect_ranking_is_all_ones() -> None:
    scores = np.vstack([ranked([4, 2], 100), ranked([7], 100)])
    assert rank_metrics(scores, [[2, 4], [7]]) == {"ndcg@10": 1.0, "hr@10": 1.0, "recall@50": 1.0, "mrr": 1.0}


@pytest.mark.parametrize(
    ("rank", "ndcg", "hr", "recall", "mrr"),
    [(3, 0.5, 1.0, 1.0, 1 / 3), (10, 1 / np.log2(11), 1.0, 1.0, 0.1), (11, 0.0, 0.0, 1.0, 1 / 11),
     (50, 0.0, 0.0, 1.0, 0.02), (51, 0.0, 0.0, 0.0, 1 / 51)],
)
def test_single_relevant_at_known_rank(rank: int, ndcg: float, hr: float, recall: float, mrr: float) -> None:
    order = [*range(10, 10 + rank - 1), 5]
    got = rank_metrics(ranked(order, 200), [[5]])
    assert got == pytest.approx({"ndcg@10": ndcg, "hr@10": hr, "recall@50": recall, "mrr": mrr})


def test_several_relevant_and_mean_over_users() -> None:
    scores = np.vstack([ranked([0, 9, 1], 100), ranked(list(range(20, 80)), 100)])
    got = rank_metrics(scores, [[0, 1], list(range(20, 80))], per_user=True)
    assert got["ndcg@10"][0] == pytest.approx((1 + 0.5) / (1 + 1 / np.log2(3)))
    assert got["mrr"][0] == 1.0 and got["recall@50"][0] == 1.0
    assert got["ndcg@10"][1] == pytest.approx(1.0)  # IDCG uses min(|rel|, 10) hits
    assert got["recall@50"][1] == pytest.approx(50 / 60)
    means = rank_metrics(scores, [[0, 1], list(range(20, 80))])
    assert means["recall@50"] == pytest.approx((1 + 50 / 60) / 2)


def test_ties_are_a_seeded_random_order_not_catalogue_order() -> None:
    n = 500
    scores = np.zeros((n, n), dtype=np.float32)  # every row all-equal
    mrr = rank_metrics(scores, [[i] for i in range(n)], tie_seed=3, per_user=True)["mrr"]
    ranks = np.rint(1 / mrr).astype(int)
    assert sorted(ranks) == list(range(1, n + 1))
    assert not np.array_equal(ranks, np.arange(1, n + 1))
    assert np.array_equal(ranks, tie_keys(n, 3) + 1)
    other = rank_metrics(scores, [[i] for i in range(n)], tie_seed=4, per_user=True)["mrr"]
    assert not np.array_equal(mrr, other)
    # A strictly higher score still wins whatever the tie order.
    row = np.zeros((1, n), dtype=np.float32)
    row[0, 123] = 1.0
    assert rank_metrics(row, [[123]], tie_seed=3)["mrr"] == 1.0


def test_matches_full_sort_reference_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (40, 300)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    relevant = [list(rng.choice(300, rng.integers(1, 70), replace=False)) for _ in range(40)]
    got = rank_metrics(scores, relevant, tie_seed=7, per_user=True)
    want = naive(scores, relevant, 7)
    for m in want:
        np.testing.assert_allclose(got[m], want[m], err_msg=m)


def test_minus_inf_is_never_ranked() -> None:
    scores = np.full((2, 30), -np.inf, dtype=np.float32)
    scores[1, :3] = 1.0
    got = rank_metrics(scores, [[0], [3, 1]], per_user=True)
    assert got["mrr"][0] == 0.0 and got["hr@10"][0] == 0.0 and got["recall@50"][0] == 0.0
    assert got["recall@50"][1] == 0.5 and got["mrr"][1] >= 1 / 3


@pytest.mark.parametrize("relevant", [[[1], []], [[1], [40]], [[1], [-1]]])
def test_bad_relevance_raises(relevant: list[list[int]]) -> None:
    with pytest.raises(ValueError):
        rank_metrics(np.zeros((2, 40), dtype=np.float32), relevant)


def test_nan_and_shape_errors() -> None:
    with pytest.raises(ValueError):
        rank_metrics(np.full((1, 5), np.nan, dtype=np.float32), [[0]])
    with pytest.raises(ValueError):
        evaluate(lambda ids: np.zeros((len(ids) + 1, 5)), 2, [[0], [1]])
    with pytest.raises(ValueError):
        evaluate(lambda ids: np.zeros((len(ids), 5 + ids[0])), 4, [[0]] * 4, chunk=2)


def test_evaluate_in_chunks_equals_one_shot() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((23, 120)).astype(np.float32)
    relevant = [list(rng.choice(120, 5, replace=False)) for _ in range(23)]
    calls: list[int] = []

    def score_fn(ids: list[int]) -> np.ndarray:
        calls.append(len(ids))
        return scores[ids]

    got = evaluate(score_fn, 23, relevant, chunk=5, per_user=True)
    assert calls == [5, 5, 5, 5, 3]
    want = rank_metrics(scores, relevant, per_user=True)
    for m in want:
        np.testing.assert_array_equal(got[m], want[m])
    assert evaluate(score_fn, 23, relevant, chunk=8) == pytest.approx(rank_metrics(scores, relevant))


def test_bootstrap_ci() -> None:
    values = np.random.default_rng(2).random(500)
    lo, hi = bootstrap_ci(values, n=500)
    assert lo < values.mean() < hi and hi - lo < 0.1
    assert bootstrap_ci([0.25] * 10) == (0.25, 0.25)


def test_paired_ratio_ci_resamples_both_methods_over_the_same_users() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(600)
    assert paired_ratio_ci(2 * base, base) == (2.0, 2.0)
    ours = 1.05 * base + rng.normal(0.0, 0.01, base.size)  # 5% better for every user
    lo, hi = paired_ratio_ci(ours, base)
    assert lo < ours.mean() / base.mean() < hi and hi - lo < 0.02
    # The same values with the users' pairing broken: the interval is that of two independent
    # means, several times wider (as two separate confidence intervals would suggest).
    lo_u, hi_u = paired_ratio_ci(rng.permutation(ours), base)
    assert hi_u - lo_u > 5 * (hi - lo)
    assert paired_ratio_ci([0.1, 0.2], [0.0, 0.0]) == (np.inf, np.inf)
    with pytest.raises(ValueError, match="one length"):
        paired_ratio_ci([0.1, 0.2], [0.1])


# ---- baselines on planted synthetic data -------------------------------------------------------

K, S_PER, T_PER = 4, 5, 6
N_SOURCE, N_TARGET = K * S_PER, K * T_PER + 3  # target 24, 25: never seen; 26: the popular one
NEW, POPULAR = [24, 25], 26


def planted(k: int) -> tuple[int, int]:
    """Cluster k's planted pair: every overlap user of cluster k takes both."""
    return k * S_PER, k * T_PER


def synthetic(with_emb: bool = True) -> PairTrainData:
    rng = np.random.default_rng(0)
    pairs, source_only, target_only = [], [], []
    for k in range(K):
        s0, t0 = planted(k)
        for _ in range(30):
            pairs.append(([s0, *rng.choice(range(s0 + 1, s0 + S_PER), 2, replace=False)],
                          [t0, *rng.choice(range(t0 + 1, t0 + T_PER), 2, replace=False)]))
        source_only += [list(rng.choice(range(s0, s0 + S_PER), 2, replace=False)) for _ in range(5)]
        others = range(t0 + 1, t0 + T_PER)
        target_only += [[POPULAR, *rng.choice(others, 2, replace=False)] for _ in range(15)]
    data = PairTrainData(N_SOURCE, N_TARGET, pairs, source_only, target_only)
    if with_emb:
        # Source cluster k lies along axis k; target cluster k along axis (k+1) % K (planted items exactly).
        def emb(n: int, per: int, shift: int) -> np.ndarray:
            e = 0.1 * rng.standard_normal((n, 4 * K)).astype(np.float32)
            for i in range(K * per):
                e[i, (i // per + shift) % K] += 1.0
            e[np.arange(K) * per] = np.eye(4 * K, dtype=np.float32)[(np.arange(K) + shift) % K]
            return e / np.linalg.norm(e, axis=1, keepdims=True)

        data.source_emb, data.target_emb = emb(N_SOURCE, S_PER, 0), emb(N_TARGET, T_PER, 1)
    return data


OPTIONS: dict[str, dict[str, float]] = {"emcdr": {"rank": 6}, "text_ridge": {"alpha": 0.1}}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_shapes_dtypes_and_new_items(name: str) -> None:
    model = make_baseline(name, **OPTIONS.get(name, {})).fit(synthetic())
    scores = model.score([[0, 1], [], [7, 7, 8]])
    assert model.name == name
    assert scores.shape == (3, N_TARGET) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(scores[:, NEW]).all()


@pytest.mark.parametrize("name", ["cooccurrence", "emcdr"])
def test_learned_baselines_rank_the_planted_item_first(name: str) -> None:
    model = make_baseline(name, **OPTIONS.get(name, {})).fit(synthetic())
    scores = model.score([[planted(k)[0]] for k in range(K)])
    assert list(scores.argmax(axis=1)) == [planted(k)[1] for k in range(K)]


@pytest.mark.parametrize(("name", "shift"), [("text_ridge", 0), ("zero_shot", -1)])
def test_text_baselines_rank_the_planted_cluster_first(name: str, shift: int) -> None:
    """text_ridge learns source cluster k -> target cluster k from the pairs; zero-shot follows the
    titles (source axis k = target cluster k-1's axis), where its planted item is exactly on axis."""
    model = make_baseline(name, **OPTIONS.get(name, {})).fit(synthetic())
    scores = model.score([[planted(k)[0]] for k in range(K)])
    clusters = [(k + shift) % K for k in range(K)]
    top = np.argsort(-scores, axis=1)[:, :T_PER]
    assert [set(row) for row in top] == [set(range(c * T_PER, (c + 1) * T_PER)) for c in clusters]
    if name == "zero_shot":
        assert list(scores.argmax(axis=1)) == [planted(c)[1] for c in clusters]


def test_popularity_planted() -> None:
    pop = make_baseline("popularity").fit(synthetic()).score([[0], [5]])
    assert (pop.argmax(axis=1) == POPULAR).all() and (pop[:, NEW] == 0).all()
    assert pop[0, POPULAR] == 4 * 15


def test_popularity_counts_all_target_users_or_only_those_on_both_platforms() -> None:
    data = PairTrainData(2, 3, [([0], [0]), ([1], [0, 1])], target_only=[[2], [2], [2, 1]])
    np.testing.assert_array_equal(make_baseline("popularity").fit(data).score([[0]]), [[2, 2, 3]])
    both = make_baseline("popularity", users="both").fit(data)
    np.testing.assert_array_equal(both.score([[0], [1]]), [[2, 1, 0], [2, 1, 0]])
    with pytest.raises(ValueError, match="users"):
        make_baseline("popularity", users="some")


def test_cooccurrence_counts_and_errors() -> None:
    data = PairTrainData(3, 4, [([0, 1], [2]), ([0], [2, 3]), ([1], [3])])
    co = make_baseline("cooccurrence").fit(data)
    np.testing.assert_array_equal(co.score([[0], [0, 1], [2]]), [[0, 0, 2, 1], [0, 0, 3, 2], [0, 0, 0, 0]])
    with pytest.raises(ValueError):
        co.score([[3]])
    with pytest.raises(ValueError):
        make_baseline("zero_shot").fit(synthetic(with_emb=False))
    with pytest.raises(KeyError):
        make_baseline("nope")


def test_tune_keeps_the_best_option() -> None:
    data = synthetic()
    best, tried = tune("emcdr", data, [{"rank": 1}, {"rank": 6}, {"rank": 3}],
                       lambda m: float(np.mean(m.score([[0]]).argmax(axis=1) == 0)))
    assert [o["rank"] for o, _ in tried] == [1, 6, 3]
    assert best.rank == 6  # type: ignore[attr-defined]


# ---- round-off, tuning in stages, history-length subsets (interest_model.evaluation.offline) -----

def test_round_off_ranks_as_a_tie_for_every_method() -> None:
    """EMCDR's unseen items score about 1e-16 instead of 0: that noise must rank like a tie."""
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal((50, 200)) * 1e-16).astype(np.float64)
    relevant = [[int(i)] for i in rng.integers(0, 200, 50)]
    tied = rank_metrics(np.zeros((50, 200)), relevant, per_user=True)
    snapped = rank_metrics(noise, relevant, per_user=True)
    for m in tied:
        np.testing.assert_array_equal(snapped[m], tied[m])
    real = rank_metrics(noise * 1e6, relevant, per_user=True)  # 1e-10: a real (if small) score
    assert any(not np.array_equal(real[m], tied[m]) for m in tied)


def test_expected_random_matches_the_mean_over_random_rankings() -> None:
    from interest_model.evaluation.metrics import expected_random

    rng = np.random.default_rng(11)
    n, users = 40, 40_000
    counts = rng.integers(1, 6, users)
    relevant = [list(rng.choice(n, c, replace=False)) for c in counts]
    drawn = rank_metrics(rng.random((users, n)), relevant, per_user=True)  # a fresh ranking per user
    expected = expected_random(n, counts)
    for m in drawn:
        for c in range(1, 6):
            at = counts == c
            assert expected[m][at].mean() == pytest.approx(drawn[m][at].mean(), abs=0.01), (m, c)
    assert expected["hr@10"][counts == 1][0] == pytest.approx(10 / n)
    assert expected["recall@50"][0] == 1.0  # 40 items: all of them are in the top 50
    with pytest.raises(ValueError):
        expected_random(3, [4])


def test_staged_tuning_keeps_the_best_of_each_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from interest_model.evaluation import offline

    stages = [[{"rank": 1}, {"rank": 6}], [{"alpha": 0.01}, {"alpha": 1e6}]]
    monkeypatch.setitem(offline.TUNING, "emcdr", stages)
    scores = {(1, 10.0): 0.1, (6, 10.0): 0.5, (6, 0.01): 0.7, (6, 1e6): 0.2}
    model, record = offline.tuned_baseline(
        "emcdr", synthetic(), lambda m: scores[(m.rank, m.alpha)])  # type: ignore[attr-defined]
    assert record is not None and record["chosen"] == {"rank": 6, "alpha": 0.01}
    assert (model.rank, model.alpha) == (6, 0.01)  # type: ignore[attr-defined]
    assert [t["valid_ndcg@10"] for t in record["tried"]] == [0.1, 0.5, 0.7, 0.2]
    fitted, nothing = offline.tuned_baseline("zero_shot", synthetic(), lambda m: 0.0)
    assert nothing is None and fitted.name == "zero_shot"


def test_history_subsets_split_users_by_source_history_length() -> None:
    from interest_model.evaluation import offline

    hist = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4, 5], list(range(9))]
    ndcg = {"ours": np.array([0.1, 0.3, 0.5, 0.7, 0.9]), "cooccurrence": np.array([0.0, 0.1, 0.5, 0.9, 0.9])}
    per_user = {name: {m: values for m in ("ndcg@10", "hr@10", "recall@50", "mrr")}
                for name, values in ndcg.items()}
    per_user["model_fp32"] = per_user.pop("ours")
    methods = {name: offline.summary(values) for name, values in per_user.items()}
    methods["cooccurrence"]["note"] = "a note"
    subsets = offline.history_subsets(hist, methods, per_user)
    assert list(subsets) == ["history-1-2", "history-3-5", "history-6+"]
    assert [s["users"] for s in subsets.values()] == [2, 2, 1]
    assert subsets["history-1-2"]["methods"]["model_fp32"]["ndcg@10"] == pytest.approx(0.2)
    assert subsets["history-3-5"]["methods"]["cooccurrence"]["ndcg@10"] == pytest.approx(0.7)
    assert subsets["history-1-2"]["methods"]["cooccurrence"]["note"] == "a note"
    assert subsets["history-1-2"]["ratio_ci95"]["ratio"] == pytest.approx(4.0)  # 0.2 against 0.05


def test_cooccurrence_normalisation_moves_popular_targets_down() -> None:
    # target 2 co-occurs with source 0 through 3 of the 4 users who took it, target 3 through
    # both of its 2: counts rank 2 first, beta = 1 (counts per taker) ranks 3 first
    data = PairTrainData(2, 4, [([0], [2]), ([0], [2]), ([0], [2, 3]), ([0], [3]), ([1], [2])])
    counts = make_baseline("cooccurrence").fit(data).score([[0]])
    np.testing.assert_array_equal(counts, [[0, 0, 3, 2]])
    per_taker = make_baseline("cooccurrence", beta=1.0).fit(data).score([[0]])
    np.testing.assert_allclose(per_taker, [[0, 0, 3 / 4, 2 / 2]])


# ---- the blend's weights searched on a set of users (interest_model.evaluation.blend) -----------

def test_blend_search_finds_the_signal_that_ranks_and_leaves_the_assets_as_they_were() -> None:
    import scipy.sparse as sp

    from interest_core.ranking.assets import Blend, RankingAssets
    from interest_model.evaluation.blend import search_blend
    from interest_model.tasks import Direction

    d = Direction("a", "b")
    # the model puts target item 0 first for everyone; the users took item 2, which co-occurs
    items = {"a": np.eye(3, dtype=np.float32), "b": np.array([[1, 0, 0], [0, 1, 0], [0.5, 0, 0.9]],
                                                              dtype=np.float32)}
    cooc = sp.csr_matrix(np.array([[0, 0, 5], [0, 0, 5], [0, 0, 5]], dtype=np.float32))
    assets = RankingAssets(item_ids={"a": ["x", "y", "z"], "b": ["p", "q", "r"]},
                           migration={d.key: np.eye(3, dtype=np.float32)}, cooccurrence={d.key: cooc},
                           popularity={"b": np.zeros(3, np.float32)}, blend={})
    rows = {"a": [[0], [0, 1]], "b": [[2], [2]]}
    best, figures = search_blend(assets, items, d, rows)
    assert best.cooc > 0 and figures["blend"] == pytest.approx(1.0) and figures["model"] < 1.0
    assert d.key not in assets.blend  # it came without weights for d and leaves without
    assets.blend[d.key] = Blend(0.05, 0.5)
    assert search_blend(assets, items, d, rows)[0] == best and assets.blend[d.key] == Blend(0.05, 0.5)
