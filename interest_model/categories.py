"""Named interest categories derived from the real item texts.

K categories are k-means clusters of the trained item embeddings, K/n per platform so that
a small catalogue gets its own categories next to a large one, each named by the terms most
distinctive of its titles against the platform's other clusters (class-based TF-IDF, with
units, pack sizes, materials and numbers never used as names); a linear classifier over the K categories
is then trained with cross-entropy (as the seed design's category head) so that any
profile vector, not only an item, gets category probabilities.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]")
# Words that never name an interest: units and sizes, pack and container words, materials,
# colours, and listing filler. A category named "pound / bag / salt" or "stainless / steel /
# quart" tells a person nothing about what they like.
UNITS = frozenset("""
oz ounce ounces fl lb lbs pound pounds gram grams kg kilogram mg ml liter liters litre litres
quart quarts qt gallon gallons pint pints cup cups inch inches in cm mm ft foot feet yard yards
count ct pack packs pk piece pieces pcs pc set sets size sizes bag bags box boxes can cans jar
jars bottle bottles case cases carton cartons pouch pouches tin tins bulk value multipack
refill refills dozen pair pairs
""".split())
MATERIALS = frozenset("""
stainless steel plastic aluminum aluminium silicone cotton polyester ceramic porcelain wood
wooden metal iron copper nylon acrylic rubber vinyl bpa
""".split())
_FILLER = frozenset("""
the and for with of in by to from new one two three four five six seven eight ten each per
this that your you are is it its x or all our use free pre
black white red blue green silver gray grey brown pink purple yellow orange gold clear
small large medium mini big extra jumbo
premium original classic assorted variety natural quality best great perfect
""".split())
_NOT_NAMES = UNITS | MATERIALS | _FILLER


def _terms(title: str) -> set[str]:
    """The words of a title that may name an interest (no numbers, units, materials, filler)."""
    return {w for w in _WORD.findall(title.lower()) if len(w) > 2 and w not in _NOT_NAMES}


def name_clusters(titles: Sequence[str], labels: np.ndarray, k: int, words: int = 3) -> list[str]:
    """Each cluster's name: its `words` terms of highest class-based TF-IDF against the other
    clusters (BERTopic's c-TF-IDF, Grootendorst 2022, arXiv:2203.05794: a class's term
    frequency times log(1 + A / f), A the average class size and f the term's frequency over
    all classes), counted as the share of the cluster's titles holding the term. A plural and
    its singular count as one term under the commoner form; a term held by fewer than 2 titles
    of the cluster (often a brand of one product line) is not used."""
    per: list[Counter[str]] = [Counter() for _ in range(k)]
    overall: Counter[str] = Counter()
    for title, label in zip(titles, labels):
        terms = _terms(title)
        per[int(label)].update(terms)
        overall.update(terms)
    canon = _singulars(overall)
    merged: list[Counter[str]] = [Counter() for _ in range(k)]
    total: Counter[str] = Counter()
    for k_i, counts in enumerate(per):
        for w, c in counts.items():
            merged[k_i][canon[w]] += c
            total[canon[w]] += c
    sizes = np.bincount(labels.astype(np.int64), minlength=k)
    average = max(float(sizes.mean()), 1.0)
    names: list[str] = []
    for k_i, counts in enumerate(merged):
        size = max(int(sizes[k_i]), 1)
        scored = sorted(((c / size) * np.log(1 + average / total[w]), w)
                        for w, c in counts.items() if c >= 2)
        best = [w for _, w in reversed(scored[-words:])]
        names.append(" / ".join(best) if best else f"category {k_i}")
    return names


def _singulars(counts: Counter[str]) -> dict[str, str]:
    """Each word's canonical form: a plural ("bars", "knives" stays) maps to its singular
    ("bar") when both occur, under whichever of the two is commoner."""
    canon = {w: w for w in counts}
    for w in counts:
        for plural, singular in ((w, w[:-1]), (w, w[:-2])):
            if singular in counts and plural.endswith("s") and (plural == singular + "s" or
                                                                plural == singular + "es"):
                keep = plural if counts[plural] > counts[singular] else singular
                canon[plural] = canon[singular] = keep
    return canon


def distinct(names: list[str]) -> list[str]:
    """Number repeated names so every category name is distinct."""
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def platform_categories(k: int, platforms: int, items: int) -> int:
    """How many of the K categories a platform of `items` items gets: K/n, at least 2, at most
    a third of its items."""
    return max(2, min(max(2, k // max(platforms, 1)), items // 3))


def derive_categories(embeddings: Mapping[str, np.ndarray], titles: Mapping[str, Sequence[str]],
                      k: int = 24, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """Cluster each platform's unit item embeddings float32 [N_p, D] into k/n named categories
    and fit one classifier over all of them; returns (names, weights float32 [K, D],
    bias float32 [K], train accuracy)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    names: list[str] = []
    all_labels = []
    for platform, emb in embeddings.items():
        k_p = platform_categories(k, len(embeddings), len(titles[platform]))
        labels = KMeans(n_clusters=k_p, n_init=3, random_state=seed).fit_predict(emb)
        all_labels.append(labels + len(names))
        names += name_clusters(titles[platform], labels, k_p)
    names = distinct(names)
    x = np.concatenate(list(embeddings.values()))
    y = np.concatenate(all_labels)
    clf = LogisticRegression(C=10.0, max_iter=300)  # multinomial: softmax cross-entropy
    clf.fit(x, y)
    accuracy = float(clf.score(x, y))
    return names, clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32), accuracy
