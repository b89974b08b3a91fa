"""The pure helpers of bench.ann_compare: synthetic catalogue, queries, exact truth, overlap."""

from __future__ import annotations

import math

import numpy as np

from bench.ann_compare import (
    NOISE,
    exact_top_k,
    growth_exponent,
    overlap_at,
    predict_build_s,
    profile_queries,
    synthetic_catalogue,
)


def unit_rows(n: int, d: int = 384, seed: int = 3) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_synthetic_catalogue_is_seeded_unit_and_close_to_its_origins() -> None:
    real = unit_rows(50)
    items, origins = synthetic_catalogue(real, 230, NOISE, seed=7, chunk=64)
    again, _ = synthetic_catalogue(real, 230, NOISE, seed=7, chunk=64)
    assert items.shape == (230, 384) and items.dtype == np.float32
    assert np.array_equal(items, again)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    assert np.bincount(origins, minlength=50).min() >= 4  # each real item used 230 / 50 times
    cosine = np.einsum("ij,ij->i", items, real[origins]).mean()
    assert abs(cosine - 1 / math.sqrt(1 + 384 * NOISE**2)) < 0.01  # about 0.925


def test_profile_queries_are_unit_means_of_a_few_items() -> None:
    real = unit_rows(40)
    queries = profile_queries(real, 20, seed=1)
    assert queries.shape == (20, 384)
    assert np.array_equal(queries, profile_queries(real, 20, seed=1))
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert (queries @ real.T).max(axis=1).min() > 0.2  # near the items they were made of


def test_exact_top_k_is_the_sorted_best_and_overlap_counts_shared_ids() -> None:
    items, queries = unit_rows(300), unit_rows(7, seed=4)
    truth = exact_top_k(items, queries, 10)
    assert np.array_equal(truth, np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10])
    assert overlap_at(truth, truth, 10) == 1.0
    found = truth.copy()
    found[:, 5:] = -1  # half missing
    assert overlap_at(found, truth, 10) == 0.5
    assert overlap_at(found, truth, 5) == 1.0


def test_build_time_prediction_and_growth() -> None:
    assert predict_build_s([], 1000) is None
    predicted = predict_build_s([(100, 1.0), (1000, 20.0)], 10_000)
    assert predicted is not None and math.isclose(predicted, 20.0 * 10 * 4 / 3)
    assert growth_exponent([(1000, 20.0), (100, 2.0)]) == [{"from_n": 100, "to_n": 1000, "exponent": 1.0}]
