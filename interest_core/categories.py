"""Named interest categories derived from the real item texts.

K categories are k-means clusters of the trained item embeddings of every platform, each
named by the words most specific to its titles; a linear classifier over the K categories
is then trained with cross-entropy (as the seed design's category head) so that any
profile vector, not only an item, gets category probabilities.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_STOP = frozenset("""
the and for with set pack inch inches ounce ounces count piece pieces size oz lb lbs of in by
to from new one two three four five six each per from this that your you are is it its x
black white red blue green silver gray grey brown small large medium mini big
""".split())


def name_clusters(titles: Sequence[str], labels: np.ndarray, k: int, words: int = 3) -> list[str]:
    """Each cluster's name: its `words` most over-represented title words (lift x frequency)."""
    overall: Counter[str] = Counter()
    per: list[Counter[str]] = [Counter() for _ in range(k)]
    for title, label in zip(titles, labels):
        tokens = {w for w in _WORD.findall(title.lower()) if w not in _STOP}
        overall.update(tokens)
        per[int(label)].update(tokens)
    total = max(len(titles), 1)
    names: list[str] = []
    for k_i, counts in enumerate(per):
        size = max(int((labels == k_i).sum()), 1)
        scored = sorted(
            ((c / size) * np.log((c / size) / (overall[w] / total)), w)
            for w, c in counts.items() if c >= min(3, max(2, size // 10))
        )
        best = [w for _, w in reversed(scored[-words:])]
        names.append(" / ".join(best) if best else f"category {k_i}")
    # Two clusters may share a name: number the repeats so every name is distinct.
    seen: Counter[str] = Counter()
    for i, n in enumerate(names):
        seen[n] += 1
        if seen[n] > 1:
            names[i] = f"{n} ({seen[n]})"
    return names


def derive_categories(embeddings: np.ndarray, titles: Sequence[str], k: int = 24,
                      seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """Cluster unit item embeddings float32 [N, D] into `k` named categories and fit the
    category classifier; returns (names, weights float32 [k, D], bias float32 [k], train accuracy)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    k = max(2, min(k, len(titles) // 3))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(embeddings)
    names = name_clusters(titles, labels, k)
    clf = LogisticRegression(C=10.0, max_iter=300)  # multinomial: softmax cross-entropy
    clf.fit(embeddings, labels)
    accuracy = float(clf.score(embeddings, labels))
    return names, clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32), accuracy
