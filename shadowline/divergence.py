"""Divergence between a production and a candidate output, by output type.

Pure functions, no I/O. Malformed outputs raise ``OutputError`` naming which
side and why; the joiner turns that into an errored comparison, never a crash.

- classification: label agreement; with probabilities also total variation
  distance (TVD), Jensen-Shannon divergence (base 2, in [0, 1]) and top-1 flip.
- probabilities: TVD, JSD, top-1 flip, Hellinger distance.
- regression: absolute and relative difference; "agree" within a relative
  tolerance.
- ranking: top-k overlap, rank-biased overlap (RBO, extrapolated), Kendall's tau
  over the items both rankings hold; "agree" when the top item is the same; the
  headline divergence is 1 - RBO.
- text: exact match, normalised edit distance, token-level F1, and (with the
  ``text`` extra and ``text_semantic = true``) the cosine similarity of sentence
  embeddings; the headline divergence is 1 - similarity when semantic, else the
  edit distance.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shadowline.errors import ShadowlineError

PROB_SUM_TOLERANCE = 1e-3
REGRESSION_TOLERANCE = 0.01
RANKING_K = 10
# RBO's persistence: the weight of the top d ranks is 1 - p^d, so with 0.9 the
# top 10 carry 65 % of the score (Webber, Moffat & Zobel 2010).
RBO_P = 0.9
# Rankings are compared to this depth at most, which bounds the joiner's work per pair.
RANKING_MAX_DEPTH = 100
# Text similarity: maps two texts to a cosine similarity in [-1, 1].
Similarity = Callable[[str, str], float]


class OutputError(ShadowlineError):
    """An output cannot be read as the experiment's output type."""

    def __init__(self, side: str, reason: str) -> None:
        super().__init__(f"{side} output {reason}")
        self.side = side


@dataclass(frozen=True)
class Divergence:
    """The verdict on one pair: agreement, headline divergence, every metric by name."""

    agree: bool | None
    divergence: float | None
    metrics: dict[str, float] = field(default_factory=dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def probabilities(value: Any, side: str) -> dict[str, float]:
    """Read a probability distribution from a dict, a list, or ``{"probabilities": ...}``."""
    if isinstance(value, dict) and "probabilities" in value:
        value = value["probabilities"]
    if isinstance(value, list):
        value = {str(i): p for i, p in enumerate(value)}
    if not isinstance(value, dict) or not value:
        raise OutputError(side, "has no probability distribution")
    dist: dict[str, float] = {}
    for key, p in value.items():
        if not _is_number(p) or not math.isfinite(p) or p < 0:
            raise OutputError(side, f"probability of {key!r} is {p!r}, not a number >= 0")
        dist[str(key)] = float(p)
    total = sum(dist.values())
    if abs(total - 1.0) > PROB_SUM_TOLERANCE:
        raise OutputError(side, f"probabilities sum to {total:.6g}, not 1")
    return dist


def label(value: Any, side: str) -> str:
    """Read a class label from a scalar or ``{"label": ...}``; falls back to the argmax."""
    if isinstance(value, dict):
        if "label" in value:
            value = value["label"]
        elif "probabilities" in value:
            dist = probabilities(value, side)
            return max(dist, key=lambda k: dist[k])
        else:
            raise OutputError(side, "is an object without 'label' or 'probabilities'")
    if isinstance(value, str | int | bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    raise OutputError(side, f"label {value!r} is not a string, integer or boolean")


def number(value: Any, side: str) -> float:
    """Read a regression value from a number or ``{"value": ...}``."""
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not _is_number(value) or not math.isfinite(value):
        raise OutputError(side, f"value {value!r} is not a finite number")
    return float(value)


def ranking(value: Any, side: str) -> list[str]:
    """Read a ranking from a list of item IDs, ``{"items": [...]}`` or a list of
    ``{"id": ...}`` objects; items are compared as strings and must be unique."""
    if isinstance(value, dict):
        if "items" not in value:
            raise OutputError(side, "is an object without 'items'")
        value = value["items"]
    if not isinstance(value, list):
        raise OutputError(side, f"ranking {str(value)[:80]!r} is not a list of items")
    items = []
    for i, item in enumerate(value[:RANKING_MAX_DEPTH]):
        if isinstance(item, dict):
            if "id" not in item:
                raise OutputError(side, f"ranking item {i} is an object without 'id'")
            item = item["id"]
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise OutputError(side, f"ranking item {i} is {item!r}, not a string or integer ID")
        items.append(str(item))
    if len(set(items)) != len(items):
        dupes = sorted({x for x in items if items.count(x) > 1})
        raise OutputError(side, f"ranking repeats items {dupes[:5]}")
    return items


def rank_biased_overlap(a: list[str], b: list[str], p: float = RBO_P) -> float:
    """Extrapolated RBO of two rankings of possibly different lengths (Webber et al.
    2010, eq. 32): 1 for identical rankings, 0 for disjoint ones."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    s, lng = len(short), len(long_)
    seen_s: set[str] = set()
    seen_l: set[str] = set()
    overlap = 0
    total = 0.0
    x_s = 0
    for d in range(1, lng + 1):
        # overlap = |short[:min(d, s)] & long[:d]|, kept up to date item by item
        if d <= s:
            item_s = short[d - 1]
            overlap += item_s in seen_l
            seen_s.add(item_s)
        item_l = long_[d - 1]
        overlap += item_l in seen_s
        seen_l.add(item_l)
        if d == s:
            x_s = overlap
        total += overlap / d * p**d
        if d > s:
            total += x_s * (d - s) / (s * d) * p**d
    rbo = (1 - p) / p * total + ((overlap - x_s) / lng + x_s / s) * p**lng
    return min(1.0, max(0.0, rbo))


def kendall_tau(a: list[str], b: list[str]) -> float | None:
    """Kendall's tau between the orders two rankings give the items they share;
    None with fewer than two shared items. Rankings have no ties, so tau-a = tau-b."""
    pos_b = {item: i for i, item in enumerate(b)}
    shared = [pos_b[item] for item in a if item in pos_b]
    n = len(shared)
    if n < 2:
        return None
    concordant = 0
    for i in range(n):
        pi = shared[i]
        for j in range(i + 1, n):
            concordant += pi < shared[j]
    pairs = n * (n - 1) // 2
    return (2 * concordant - pairs) / pairs


def ranking_metrics(a: list[str], b: list[str], k: int = RANKING_K) -> dict[str, float]:
    """Top-k overlap, RBO, Kendall's tau over shared items, top-1 flip."""
    metrics = {
        "topk_overlap": len(set(a[:k]) & set(b[:k])) / k,
        "rbo": rank_biased_overlap(a, b),
        "top1_flip": float(a[:1] != b[:1]),
        "shared_items": float(len(set(a) & set(b))),
    }
    tau = kendall_tau(a, b)
    if tau is not None:
        metrics["kendall_tau"] = tau
    return metrics


def text(value: Any, side: str) -> str:
    """Read a free-text output from a string or ``{"text": ...}``."""
    if isinstance(value, dict):
        if "text" not in value:
            raise OutputError(side, "is an object without 'text'")
        value = value["text"]
    if not isinstance(value, str):
        raise OutputError(side, f"text {value!r} is not a string")
    return value


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _tokens(value: str) -> list[str]:
    # SQuAD's answer normalisation: case, punctuation and English articles ignored.
    return _ARTICLES.sub(" ", value.lower().translate(_PUNCTUATION)).split()


def token_f1(a: str, b: str) -> float:
    """Token-level F1 of two texts (bag of normalised words); 1 when both are empty."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return float(ta == tb)
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(tb), common / len(ta)
    return 2 * precision * recall / (precision + recall)


def text_metrics(a: str, b: str, similarity: Similarity | None = None) -> dict[str, float]:
    """Exact match, normalised edit distance, token F1 and (given) semantic similarity."""
    metrics = {
        "exact_match": float(a.strip() == b.strip()),
        "edit_distance": _levenshtein().normalized_distance(a, b),
        "token_f1": token_f1(a, b),
    }
    if similarity is not None:
        metrics["semantic_similarity"] = min(1.0, max(-1.0, float(similarity(a, b))))
    return metrics


def _entropy_terms(p: float, m: float) -> float:
    return p * math.log2(p / m) if p > 0 else 0.0


def distribution_metrics(p: dict[str, float], q: dict[str, float]) -> dict[str, float]:
    """TVD, JSD (base 2), Hellinger distance and top-1 flip between two distributions."""
    keys = p.keys() | q.keys()
    tvd = 0.0
    jsd = 0.0
    bc = 0.0
    for k in keys:
        a, b = p.get(k, 0.0), q.get(k, 0.0)
        m = (a + b) / 2
        tvd += abs(a - b)
        jsd += 0.5 * (_entropy_terms(a, m) + _entropy_terms(b, m))
        bc += math.sqrt(a * b)
    top_p = max(p, key=lambda k: (p[k], k))
    top_q = max(q, key=lambda k: (q[k], k))
    return {
        "tvd": min(1.0, tvd / 2),
        "jsd": min(1.0, max(0.0, jsd)),
        "hellinger": math.sqrt(max(0.0, 1.0 - min(1.0, bc))),
        "top1_flip": float(top_p != top_q),
    }


def compare(
    output_type: str,
    production: Any,
    candidate: Any,
    tolerance: float = REGRESSION_TOLERANCE,
    *,
    k: int = RANKING_K,
    similarity: Similarity | None = None,
) -> Divergence:
    """Compare two outputs of one request; raises ``OutputError`` on malformed ones.

    ``k`` is the depth of the ranking top-k overlap; ``similarity`` scores two texts
    (sentence embeddings) for text outputs."""
    if output_type == "classification":
        lp, lc = label(production, "production"), label(candidate, "candidate")
        agree = lp == lc
        metrics = {"label_flip": float(not agree)}
        has_p = isinstance(production, dict) and "probabilities" in production
        has_c = isinstance(candidate, dict) and "probabilities" in candidate
        if has_p and has_c:
            metrics |= distribution_metrics(
                probabilities(production, "production"), probabilities(candidate, "candidate")
            )
            return Divergence(agree, metrics["jsd"], metrics)
        return Divergence(agree, metrics["label_flip"], metrics)
    if output_type == "probabilities":
        metrics = distribution_metrics(
            probabilities(production, "production"), probabilities(candidate, "candidate")
        )
        return Divergence(metrics["top1_flip"] == 0.0, metrics["jsd"], metrics)
    if output_type == "regression":
        vp, vc = number(production, "production"), number(candidate, "candidate")
        abs_diff = abs(vc - vp)
        scale = abs(vp)
        rel = abs_diff / scale if scale > 0 else (0.0 if abs_diff == 0 else math.inf)
        metrics = {"abs_diff": abs_diff, "signed_diff": vc - vp}
        if math.isfinite(rel):
            metrics["rel_diff"] = rel
        agree = rel <= tolerance
        return Divergence(agree, rel if math.isfinite(rel) else abs_diff, metrics)
    if output_type == "ranking":
        ra, rb = ranking(production, "production"), ranking(candidate, "candidate")
        metrics = ranking_metrics(ra, rb, k)
        return Divergence(metrics["top1_flip"] == 0.0, 1.0 - metrics["rbo"], metrics)
    if output_type == "text":
        ta, tb = text(production, "production"), text(candidate, "candidate")
        metrics = text_metrics(ta, tb, similarity)
        headline = (
            1.0 - max(0.0, metrics["semantic_similarity"])
            if "semantic_similarity" in metrics
            else metrics["edit_distance"]
        )
        return Divergence(metrics["exact_match"] == 1.0, headline, metrics)
    raise ValueError(f"unknown output type {output_type!r}")


def _levenshtein() -> Any:
    # rapidfuzz comes with the pipeline extra: the serving side imports this module for
    # the ranking and output checks only.
    from shadowline.extras import need

    return need("rapidfuzz.distance", "pipeline").Levenshtein
