import math

import pytest

from shadowline.divergence import OutputError, compare, distribution_metrics


def test_identical_distributions_have_zero_divergence():
    m = distribution_metrics({"a": 0.3, "b": 0.7}, {"a": 0.3, "b": 0.7})
    assert m["tvd"] == 0 and m["top1_flip"] == 0
    assert m["jsd"] == pytest.approx(0, abs=1e-12)
    assert m["hellinger"] == pytest.approx(0, abs=1e-6)


def test_disjoint_distributions_are_maximally_divergent():
    m = distribution_metrics({"a": 1.0}, {"b": 1.0})
    assert m["tvd"] == 1.0 and m["jsd"] == pytest.approx(1.0) and m["top1_flip"] == 1.0
    assert m["hellinger"] == pytest.approx(1.0)


def test_jsd_against_a_hand_computed_value():
    # P=(0.5,0.5), Q=(0.9,0.1): M=(0.7,0.3)
    p, q, mix = (0.5, 0.5), (0.9, 0.1), (0.7, 0.3)
    kl = lambda a, b: sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True))  # noqa: E731
    expected = 0.5 * kl(p, mix) + 0.5 * kl(q, mix)
    m = distribution_metrics({"0": 0.5, "1": 0.5}, {"0": 0.9, "1": 0.1})
    assert m["jsd"] == pytest.approx(expected)
    assert m["tvd"] == pytest.approx(0.4)


def test_classification_labels_and_probabilities():
    same = compare("classification", {"label": 1}, {"label": 1})
    assert same.agree is True and same.divergence == 0.0
    flip = compare("classification", "cat", "dog")
    assert flip.agree is False and flip.divergence == 1.0
    probs = compare(
        "classification",
        {"label": 1, "probabilities": {"0": 0.2, "1": 0.8}},
        {"label": 1, "probabilities": {"0": 0.4, "1": 0.6}},
    )
    assert probs.agree is True
    assert probs.metrics["tvd"] == pytest.approx(0.2)
    assert probs.divergence == probs.metrics["jsd"] > 0
    assert probs.metrics["top1_flip"] == 0.0


def test_probabilities_accepts_lists_and_flags_top1_flips():
    d = compare("probabilities", [0.6, 0.4], [0.4, 0.6])
    assert d.agree is False and d.metrics["top1_flip"] == 1.0


def test_regression_differences():
    d = compare("regression", 100.0, 103.0)
    assert d.metrics["abs_diff"] == 3.0 and d.metrics["rel_diff"] == pytest.approx(0.03)
    assert d.agree is False
    assert compare("regression", {"value": 2.0}, 2.01).agree is True
    zero = compare("regression", 0.0, 0.5)
    assert zero.divergence == 0.5 and "rel_diff" not in zero.metrics


@pytest.mark.parametrize(
    ("output_type", "prod", "cand", "side", "text"),
    [
        ("probabilities", [0.5, 0.5], [0.9, 0.9], "candidate", "sum to 1.8"),
        ("probabilities", [0.5, 0.5], [-0.5, 1.5], "candidate", "not a number >= 0"),
        ("regression", "big", 1.0, "production", "not a finite number"),
        ("regression", 1.0, math.nan, "candidate", "not a finite number"),
        ("classification", {"score": 1}, {"label": 1}, "production", "without 'label'"),
        ("classification", {"label": 1}, [1, 2], "candidate", "not a string"),
    ],
)
def test_malformed_outputs_name_the_side(output_type, prod, cand, side, text):
    with pytest.raises(OutputError, match=text) as err:
        compare(output_type, prod, cand)
    assert err.value.side == side
