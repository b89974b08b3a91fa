"""Named interest categories derived from the real item texts.

K categories are k-means clusters of the trained item embeddings, K/n per platform so that
a small catalogue gets its own categories next to a large one, each named by the words most
specific to its titles within that platform; a linear classifier over the K categories
is then trained with cross-entropy (as the seed design's category head) so that any
profile vector, not only an item, gets category probabilities.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

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
    return names


def _distinct(names: list[str]) -> list[str]:
    """Number repeated names so every category name is distinct."""
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def derive_categories(embeddings: Mapping[str, np.ndarray], titles: Mapping[str, Sequence[str]],
                      k: int = 24, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """Cluster each platform's unit item embeddings float32 [N_p, D] into k/n named categories
    and fit one classifier over all of them; returns (names, weights float32 [K, D],
    bias float32 [K], train accuracy)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    names: list[str] = []
    all_labels = []
    per_platform = max(2, k // max(len(embeddings), 1))
    for platform, emb in embeddings.items():
        k_p = max(2, min(per_platform, len(titles[platform]) // 3))
        labels = KMeans(n_clusters=k_p, n_init=3, random_state=seed).fit_predict(emb)
        all_labels.append(labels + len(names))
        names += name_clusters(titles[platform], labels, k_p)
    names = _distinct(names)
    x = np.concatenate(list(embeddings.values()))
    y = np.concatenate(all_labels)
    clf = LogisticRegression(C=10.0, max_iter=300)  # multinomial: softmax cross-entropy
    clf.fit(x, y)
    accuracy = float(clf.score(x, y))
    return names, clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32), accuracy
