"""Benchmark: how much each interleaving method can tell per query, against A/B.

    .venv/bin/python bench/interleaving_methods.py
    .venv/bin/python bench/interleaving_methods.py --queries 20000 --optimized-queries 3000

bench/gate_statistics.py measures team-draft interleaving (the product's) with the
gate's own sequential test against an A/B split with the gate's A/B rule, and bounds
what any test of team-draft outcomes could do. This bench asks whether another
interleaving method would do better on the same simulated traffic (bench/simulation.py:
30 documents per query, a top 10 shown, position-based or cascade clicks), and how the
answer moves with the traffic. For each method it simulates queries, takes the
per-query outcome that method credits, and reports the queries a sequential test that
knew the outcome's distribution would need to fail the worse ranker at alpha 0.05
(Wald's approximation with the normal KL, log(1/alpha) / (mean^2 / (2 var)) per query).
A/B gets the same treatment (the share of queries with a click, half the queries to
each arm), so "A/B / method" compares the best each could do, side by side:

- team-draft: the sign of (clicks on the candidate's team - on production's), what the
  gate tests (Radlinski, Kurup & Joachims 2008);
- probabilistic interleaving with marginalisation (Hofmann, Whiteson & de Rijke 2011,
  2013): each position drawn from one ranker's softmax over ranks (1 / rank^tau), the
  outcome the sign of the click difference averaged over every assignment of positions
  to rankers given the list shown;
- optimized interleaving (Radlinski & Craswell 2013): lists whose every position is the
  best not-yet-shown document of one ranker, credit per click the linear rank
  difference, the list's distribution chosen per query by a linear programme so that a
  user clicking at random gives zero expected credit at every depth, maximising the
  expected squared credit; outcome the summed credit.

Variants of the traffic: the bench's own (production ranks through noise 0.3, the
candidate through 0.6), queries that differ in intent (every document's attractiveness
scaled by a per-query Uniform(0, 1)), a smaller gap (0.3 vs 0.4) and a larger one (0.0
vs 0.3). Writes bench/results/interleaving_methods.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulation import CATALOGUE, LIST_LENGTH, Rankers, clicks, full_query  # noqa: E402

from shadowline.interleave import team_draft  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
ALPHA = 0.05
TAU = 3.0  # Hofmann et al.'s softmax exponent

Query = tuple[np.ndarray, np.ndarray, np.ndarray]  # attractiveness, full rankings p, c


def team_draft_outcome(q: Query, model: str, rng: np.random.Generator, seed: int) -> float:
    attract, prod, cand = q
    merged, teams = team_draft(
        {"p": prod[:LIST_LENGTH].tolist(), "c": cand[:LIST_LENGTH].tolist()}, seed
    )
    got = clicks(model, attract, merged[:LIST_LENGTH], rng)
    c = sum(teams[pos] == "c" for pos in got)
    return float(np.sign(c - (len(got) - c)))


def probabilistic_outcome(q: Query, model: str, rng: np.random.Generator, seed: int) -> float:
    attract, prod, cand = q
    weight = 1.0 / np.arange(1, CATALOGUE + 1) ** TAU
    sp = np.empty(CATALOGUE)
    sc = np.empty(CATALOGUE)
    sp[prod] = weight
    sc[cand] = weight
    left = np.ones(CATALOGUE, bool)
    shown: list[int] = []
    p_cand: list[float] = []  # P(position drawn from the candidate | list so far)
    for _ in range(LIST_LENGTH):
        s = (sp, sc)[int(rng.integers(2))] * left
        d = int(rng.choice(CATALOGUE, p=s / s.sum()))
        pp = sp[d] / (sp * left).sum()
        pc = sc[d] / (sc * left).sum()
        p_cand.append(pc / (pp + pc))
        shown.append(d)
        left[d] = False
    got = clicks(model, attract, shown, rng)
    expected = 0.0
    for assign in product((0, 1), repeat=len(got)):
        p = 1.0
        for pos, a in zip(got, assign, strict=True):
            p *= p_cand[pos] if a else 1 - p_cand[pos]
        expected += p * float(np.sign(2 * sum(assign) - len(got)))
    return expected


def _allowed_lists(a: list[int], b: list[int]) -> list[tuple[int, ...]]:
    out: set[tuple[int, ...]] = set()

    def grow(prefix: list[int]) -> None:
        if len(prefix) == LIST_LENGTH:
            out.add(tuple(prefix))
            return
        heads = {next(d for d in r if d not in prefix) for r in (a, b) if set(r) - set(prefix)}
        for d in heads:
            grow([*prefix, d])

    grow([])
    return sorted(out)


def optimized_outcome(q: Query, model: str, rng: np.random.Generator, seed: int) -> float:
    attract, prod_full, cand_full = q
    prod = prod_full[:LIST_LENGTH].tolist()
    cand = cand_full[:LIST_LENGTH].tolist()
    lists = _allowed_lists(prod, cand)

    def rank(r: list[int], d: int) -> int:
        return r.index(d) + 1 if d in r else LIST_LENGTH + 1

    credit = np.array([[rank(prod, d) - rank(cand, d) for d in lst] for lst in lists], float)
    depth = np.cumsum(credit, axis=1)
    a_eq = np.vstack([np.ones(len(lists)), depth.T])
    b_eq = np.zeros(LIST_LENGTH + 1)
    b_eq[0] = 1.0
    res = linprog(-(credit**2).sum(axis=1), A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                  method="highs")  # fmt: skip
    if res.status != 0:  # no unbiased design for this pair: the query tells nothing
        return 0.0
    p = np.clip(res.x, 0.0, None)
    i = int(rng.choice(len(lists), p=p / p.sum()))
    got = clicks(model, attract, list(lists[i]), rng)
    return float(sum(credit[i][pos] for pos in got))


def queries_needed(outcomes: np.ndarray) -> float:
    """Queries a test knowing the outcome distribution needs on average (normal KL)."""
    mean, var = float(outcomes.mean()), float(outcomes.var())
    info = mean * mean / (2 * var) if var > 0 else 0.0
    return math.log(1 / ALPHA) / info if info > 0 else math.inf


def ab_queries(q_clicks: tuple[np.ndarray, np.ndarray]) -> float:
    """The same for an A/B split on the share of queries with a click: n queries, n/2 to
    each arm, so the difference's variance is 2 (v_p + v_c) / n."""
    p, c = (float(x.mean()) for x in q_clicks)
    diff = p - c
    info = diff * diff / (2 * 2 * (p * (1 - p) + c * (1 - c)))
    return math.log(1 / ALPHA) / info if info > 0 else math.inf


Method = Callable[[Query, str, np.random.Generator, int], float]
METHODS: dict[str, Method] = {
    "team-draft": team_draft_outcome,
    "probabilistic": probabilistic_outcome,
    "optimized": optimized_outcome,
}
VARIANTS: dict[str, tuple[Rankers, bool]] = {
    "bench traffic (noise 0.3 vs 0.6)": (Rankers(), False),
    "queries differ in intent": (Rankers(), True),
    "smaller gap (0.3 vs 0.4)": (Rankers(0.3, 0.4), False),
    "larger gap (0.0 vs 0.3)": (Rankers(0.0, 0.3), False),
}


def measure(model: str, variant: str, queries: int, optimized_queries: int, seed: int
            ) -> dict[str, Any]:  # fmt: skip
    rankers, spread = VARIANTS[variant]
    res: dict[str, Any] = {"click_model": model, "variant": variant}
    rng = np.random.default_rng(seed)
    hits: tuple[list[float], list[float]] = ([], [])
    for _ in range(queries):
        attract, prod, cand = full_query(rng, rankers, spread)
        for arm, ranking in enumerate((prod, cand)):
            hits[arm].append(float(bool(clicks(model, attract, ranking[:LIST_LENGTH].tolist(),
                                                rng))))  # fmt: skip
    ab = ab_queries((np.array(hits[0]), np.array(hits[1])))
    res["ab_queries"] = ab
    for name, method in METHODS.items():
        n = optimized_queries if name == "optimized" else queries
        rng = np.random.default_rng(seed + 1)
        outcomes = np.empty(n)
        started = time.perf_counter()
        for i in range(n):
            outcomes[i] = method(full_query(rng, rankers, spread), model, rng, seed + i)
        need = queries_needed(outcomes)
        res[name] = {
            "queries_simulated": n,
            "mean_outcome": float(outcomes.mean()),
            "queries_at_best": need,
            "ab_over_method": ab / need,
            "seconds": round(time.perf_counter() - started, 1),
        }
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument(
        "--optimized-queries",
        type=int,
        default=3_000,
        help="optimized interleaving solves a linear programme per query",
    )
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()
    rows = []
    for model in ("pbm", "cascade"):
        for variant in VARIANTS:
            row = measure(model, variant, args.queries, args.optimized_queries, args.seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    OUT.mkdir(exist_ok=True)
    (OUT / "interleaving_methods.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| click model | traffic | A/B: queries at best | team-draft: queries (A/B ÷) "
        "| probabilistic (A/B ÷) | optimized (A/B ÷) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[m]['queries_at_best']:,.0f} ({r[m]['ab_over_method']:.1f}x)" for m in METHODS]
        lines.append(f"| {r['click_model']} | {r['variant']} | {r['ab_queries']:,.0f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    (OUT / "interleaving_methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
