"""Ranking and text divergence: checked against independent computations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import kendalltau

from shadowline.divergence import (
    OutputError,
    compare,
    kendall_tau,
    rank_biased_overlap,
    ranking,
    text_metrics,
    token_f1,
)

ITEMS = st.lists(st.integers(0, 30).map(str), unique=True, max_size=25)


def _rbo_equal_length(a: list[str], b: list[str], p: float) -> float:
    """RBO_ext for two rankings of the same length k, straight from its definition:
    (1-p)/p * sum_d (|a[:d] & b[:d]| / d) p^d + (|a & b| / k) p^k."""
    k = len(a)
    head = sum(len(set(a[:d]) & set(b[:d])) / d * p**d for d in range(1, k + 1))
    return (1 - p) / p * head + len(set(a) & set(b)) / k * p**k


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_rbo_known_values() -> None:
    # Two items swapped at depth 1..2 with p = 0.9: X1 = 0, X2 = 2 ->
    # 0.1/0.9 * (2/2 * 0.81) + 2/2 * 0.81 = 0.09 + 0.81.
    assert rank_biased_overlap(["a", "b"], ["b", "a"], 0.9) == pytest.approx(0.9)
    assert rank_biased_overlap(list("abcde"), list("abcde")) == pytest.approx(1.0)
    assert rank_biased_overlap(list("abc"), list("xyz")) == 0.0
    # A prefix agrees with the longer list everywhere it can be seen.
    assert rank_biased_overlap(list("abc"), list("abcdef")) == pytest.approx(1.0)
    assert rank_biased_overlap([], []) == 1.0 and rank_biased_overlap(["a"], []) == 0.0


@given(st.permutations(list("abcdefghijkl")), st.permutations(list("abcdefghijkl")))
def test_rbo_matches_its_definition_on_equal_lengths(a: list[str], b: list[str]) -> None:
    for k in (1, 5, 12):
        assert rank_biased_overlap(a[:k], b[:k], 0.9) == pytest.approx(
            _rbo_equal_length(a[:k], b[:k], 0.9), abs=1e-9
        )


@given(ITEMS, ITEMS)
def test_rbo_is_symmetric_and_bounded(a: list[str], b: list[str]) -> None:
    r = rank_biased_overlap(a, b)
    assert 0.0 <= r <= 1.0
    assert r == pytest.approx(rank_biased_overlap(b, a), abs=1e-12)


@given(ITEMS, ITEMS)
def test_kendall_tau_agrees_with_scipy(a: list[str], b: list[str]) -> None:
    shared = [x for x in a if x in set(b)]
    tau = kendall_tau(a, b)
    if len(shared) < 2:
        assert tau is None
        return
    expected = kendalltau([a.index(x) for x in shared], [b.index(x) for x in shared]).statistic
    assert tau == pytest.approx(expected, abs=1e-12)


def test_ranking_compare_metrics() -> None:
    prod = ["d1", "d2", "d3", "d4"]
    cand = {"items": [{"id": "d2"}, {"id": "d1"}, {"id": "d9"}, {"id": "d3"}]}
    div = compare("ranking", prod, cand, k=2)
    assert div.agree is False  # the top item differs
    m = div.metrics
    assert m["topk_overlap"] == 1.0  # {d1, d2} both ways
    assert m["shared_items"] == 3
    # d1, d2, d3 in production order sit at candidate ranks 1, 0, 3: one pair of three flips.
    assert m["kendall_tau"] == pytest.approx(1 / 3)
    assert div.divergence == pytest.approx(1 - m["rbo"])
    assert compare("ranking", prod, list(prod)).divergence == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("d1,d2", "not a list"),
        ({"ranked": []}, "without 'items'"),
        ([{"score": 1}], "without 'id'"),
        ([1.5], "not a string or integer"),
        (["a", "b", "a"], "repeats items ['a']"),
    ],
)
def test_malformed_rankings_name_the_fault(value: object, fault: str) -> None:
    with pytest.raises(OutputError, match="candidate") as err:
        ranking(value, "candidate")
    assert fault in str(err.value)


def test_text_metrics_known_values() -> None:
    m = text_metrics("The cat sat on the mat.", "the cat sat on a mat")
    assert m["exact_match"] == 0.0
    assert m["token_f1"] == 1.0  # case, punctuation and articles do not count
    assert token_f1("paris is the capital", "paris capital city") == pytest.approx(
        2 * (2 / 3) * (2 / 3) / (4 / 3)  # precision 2/3, recall 2/3 (articles dropped)
    )
    assert text_metrics("same", " same ")["exact_match"] == 1.0


@given(st.text(max_size=30), st.text(max_size=30))
def test_edit_distance_is_levenshtein_over_the_longer_length(a: str, b: str) -> None:
    expected = _levenshtein(a, b) / max(len(a), len(b)) if (a or b) else 0.0
    assert text_metrics(a, b)["edit_distance"] == pytest.approx(expected)


def test_text_compare_headline_and_errors() -> None:
    div = compare("text", {"text": "hello world"}, "hello there")
    assert div.agree is False
    assert div.divergence == pytest.approx(5 / 11)
    with pytest.raises(OutputError, match="production output text 3 is not a string"):
        compare("text", 3, "x")
    # With a similarity function the headline is 1 - similarity.
    div = compare("text", "a", "b", similarity=lambda x, y: 0.25)
    assert div.metrics["semantic_similarity"] == 0.25 and div.divergence == 0.75
    assert math.isfinite(compare("text", "", "").divergence)


def test_bundled_embedding_model_loads_offline_and_ranks_paraphrases_higher() -> None:
    # The text extra is part of the development install (make setup, .ci/run).
    from shadowline.embeddings import similarity

    paraphrase = similarity("The capital of France is Paris.", "Paris is France's capital.")
    unrelated = similarity("The capital of France is Paris.", "Quarterly revenue grew 5%.")
    assert paraphrase > 0.8 > 0.3 > unrelated
