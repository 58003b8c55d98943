"""The SVG line charts of the reports and the dashboard (shadowline.charts)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowline import charts

NS = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 12, 3, 5, 0)  # noqa: DTZ001 (naive, as the warehouse returns minutes)


def _parse(svg: str) -> ElementTree.Element:
    root = ElementTree.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def _points(line: ElementTree.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]  # type: ignore[misc]


@given(
    st.floats(-1e9, 1e9, allow_nan=False),
    st.floats(0, 1e9, allow_nan=False),
)
def test_ticks_cover_the_range_in_equal_round_steps(low: float, width: float) -> None:
    high = low + width
    ticks = charts.nice_ticks(low, high)
    step = ticks[1] - ticks[0]
    # covered to within a billionth of a step (float rounding at the edges)
    assert ticks[0] <= low + 1e-9 * step and ticks[-1] >= high - 1e-9 * step
    assert 2 <= len(ticks) <= 12
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert all(math.isclose(g, step, rel_tol=1e-6) for g in gaps)
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5, 10))


def test_ticks_of_a_constant_and_of_a_share() -> None:
    assert charts.nice_ticks(0, 0.0123) == [0.0, 0.005, 0.01, 0.015]
    low, *_, high = charts.nice_ticks(5, 5)
    assert low < 5 < high
    assert charts.nice_ticks(0, 0)[0] == 0  # a rate that stays 0 is not framed below 0
    with pytest.raises(ValueError, match="finite"):
        charts.nice_ticks(0, math.inf)


def test_a_line_per_series_placed_on_its_values() -> None:
    series = {
        "risk-v2": [(T0 + timedelta(minutes=i), float(i)) for i in range(11)],
        "forest": [(T0 + timedelta(minutes=i), 10.0 - i) for i in range(11)],
    }
    root = _parse(charts.line_chart(series, "Pairs per minute", "pairs"))
    lines = root.findall(f"{NS}polyline")
    assert [ln.find(f"{NS}title").text for ln in lines] == ["forest", "risk-v2"]  # type: ignore[union-attr]
    rising = _points(lines[1])
    assert len(rising) == 11
    xs, ys = zip(*rising, strict=True)
    assert list(xs) == sorted(xs) and xs[0] == charts.LEFT
    assert xs[-1] == charts.WIDTH - charts.RIGHT
    # y grows downwards: 0 at the bottom of the plot, 10 (the top tick) at its top
    assert ys[0] == charts.HEIGHT - charts.BOTTOM and ys[-1] == charts.TOP
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "Pairs per minute" in texts and "pairs" in texts and "05:04" in texts
    assert "forest" in texts and "risk-v2" in texts


def test_hostile_names_are_text_and_bad_values_are_left_out() -> None:
    name = "<script>alert(1)</script>&' onload='x"
    series = {
        name: [(T0, 1.0), (T0 + timedelta(minutes=1), math.nan), (T0 + timedelta(minutes=2), 2.0)],
        "inf": [(T0, math.inf)],
    }
    svg = charts.line_chart(series, "<b>title</b>", "y")
    root = _parse(svg)
    assert not list(root.iter(f"{NS}script")) and "<script>" not in svg and "<b>" not in svg
    assert name in [t.text for t in root.iter(f"{NS}text")]
    (line,) = root.findall(f"{NS}polyline")  # "inf" has no finite point: no line, no entry
    assert len(_points(line)) == 2
    assert len(root.findall(f"{NS}circle")) == 2  # under three points: markers too


def test_one_point_is_centred_in_a_ten_minute_frame() -> None:
    root = _parse(charts.line_chart({"a": [(T0.replace(tzinfo=UTC), 0.5)]}, "t", "y"))
    (dot,) = root.findall(f"{NS}circle")
    assert float(dot.get("cx", "0")) == (charts.LEFT + charts.WIDTH - charts.RIGHT) / 2
    assert {"04:56", "05:00", "05:04"} <= {t.text for t in root.iter(f"{NS}text")}


def test_no_data_says_so() -> None:
    root = _parse(charts.line_chart({"a": []}, "t", "y"))
    assert not root.findall(f"{NS}polyline")
    assert "no data in this range" in [t.text for t in root.iter(f"{NS}text")]


def test_a_long_series_is_drawn_with_a_bounded_number_of_points() -> None:
    # a month of minutes, with one spike that must survive the thinning
    values = [(T0 + timedelta(minutes=i), 1.0) for i in range(43_200)]
    values[20_000] = (values[20_000][0], 50.0)
    svg = charts.line_chart({"p99": values}, "p99", "ms")
    (line,) = _parse(svg).findall(f"{NS}polyline")
    points = _points(line)
    plot_w = charts.WIDTH - charts.LEFT - charts.RIGHT
    assert len(points) <= 4 * plot_w
    short = _parse(charts.line_chart({"p99": [values[0], values[20_000]]}, "p99", "ms"))
    spike = min(y for _, y in _points(short.findall(f"{NS}polyline")[0]))
    assert min(y for _, y in points) == spike  # the spike survives the thinning
    assert len(svg) < 100_000


def test_the_legend_grows_the_chart_instead_of_covering_it() -> None:
    series = {f"label-{i}": [(T0, float(i)), (T0 + timedelta(minutes=1), 1.0)] for i in range(40)}
    root = _parse(charts.line_chart(series, "drift", "share"))
    height = float(root.get("height", "0"))
    assert height > charts.HEIGHT
    legend_ys = [
        float(t.get("y", "0"))
        for t in root.iter(f"{NS}text")
        if (t.text or "").startswith("label-")
    ]
    assert len(legend_ys) == 40 and min(legend_ys) > charts.HEIGHT - charts.BOTTOM
    assert max(legend_ys) < height


@pytest.mark.parametrize(
    ("span", "pattern"),
    [
        (timedelta(seconds=50), r"05:00:\d0"),
        (timedelta(minutes=1), r"05:0[01]:\d0"),
        (timedelta(hours=3), r"0[5-8]:\d\d"),
        (timedelta(days=2), r"12-0[3-5] \d\d:00"),
        (timedelta(days=60), r"202[67]-\d\d-\d\d"),
    ],
)
def test_no_two_time_ticks_read_the_same(span: timedelta, pattern: str) -> None:
    root = _parse(charts.line_chart({"a": [(T0, 1.0), (T0 + span, 2.0)]}, "t", "y"))
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("y") == str(charts.HEIGHT - 30)]
    assert len(labels) >= 3 and len(set(labels)) == len(labels)
    assert all(re.fullmatch(pattern, label or "") for label in labels), labels
