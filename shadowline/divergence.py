"""Divergence between a production and a candidate output, by output type.

Pure functions, no I/O. Malformed outputs raise ``OutputError`` naming which
side and why; the joiner turns that into an errored comparison, never a crash.

- classification: label agreement; with probabilities also total variation
  distance (TVD), Jensen-Shannon divergence (base 2, in [0, 1]) and top-1 flip.
- probabilities: TVD, JSD, top-1 flip, Hellinger distance.
- regression: absolute and relative difference; "agree" within a relative
  tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shadowline.errors import ShadowlineError

PROB_SUM_TOLERANCE = 1e-3
REGRESSION_TOLERANCE = 0.01


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
    output_type: str, production: Any, candidate: Any, tolerance: float = REGRESSION_TOLERANCE
) -> Divergence:
    """Compare two outputs of one request; raises ``OutputError`` on malformed ones."""
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
    raise ValueError(f"unknown output type {output_type!r}")
