"""User data in the reports and pages: a mirrored output, label, error or request ID may
hold anything. Each is cut to a bounded size and escaped, so it can neither break a
table, inject HTML, nor make a page read megabytes (real chDB, read over HTTP)."""

from __future__ import annotations

import re

import pytest

from shadowline import dashboard, report
from shadowline.config import parse_config
from shadowline.warehouse import Warehouse
from tests.conftest import free_port
from tests.fixtures.rows import comparison

pytestmark = pytest.mark.integration

HUGE_LABEL = "A|B\n<script>alert(1)</script>" + "|" * 1_000_000
EVIL_ID = "b\n| injected | row |<img src=x onerror=alert(2)>"
EVIL_ERROR = "ValueError: <iframe src=javascript:alert(3)> `code` **bold** [link](http://x)"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    cfg = parse_config(
        {
            "warehouse": {"path": str(tmp_path_factory.mktemp("wh-hostile")), "port": free_port()},
            "experiments": [
                {
                    "name": "hostile",
                    "production_model": "prod",
                    "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
                }
            ],
        },
        env={},
    )
    wh = Warehouse.open_owner(cfg)
    rows = [
        comparison(
            {0: "a-huge", 1: EVIL_ID}.get(i, f"ok-{i}"),
            candidate="cand",
            experiment="hostile",
            production_model="prod",
            agree=i % 2 == 0,
            divergence=1.0 if i % 2 or i == 0 else 0.0,
            production_output={"label": HUGE_LABEL if i == 0 else f"label-{i % 20}"},
            candidate_output=None if i == 3 else {"label": f"other-{i}"},
            candidate_error=EVIL_ERROR if i == 3 else None,
        )  # fmt: skip
        for i in range(50)
    ]
    wh.insert_comparisons(rows)
    server = wh.serve_http()
    yield cfg
    server.shutdown()
    wh.close()


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_the_markdown_report_keeps_its_tables_and_passes_no_html(config, tmp_path):
    out = tmp_path / "r.md"
    report.write(config, "hostile", out, fmt="md")
    text = out.read_text()
    assert len(text) < 200_000, len(text)
    for raw in ("<script", "<img", "<iframe", "| injected | row |"):
        assert raw not in text, raw
    table = None
    for line in text.splitlines():
        if line.startswith("| request | candidate"):
            table = _unescaped_pipes(line)
        elif table is not None and line.startswith("|"):
            assert _unescaped_pipes(line) == table, line[:200]
        elif table is not None:
            break
    assert table == 6
    assert "more characters\\)" in text and "b \\| injected \\| row \\|&lt;img" in text


def test_the_html_report_and_the_dashboard_page_stay_small_and_escaped(config, tmp_path):
    out = tmp_path / "r.html"
    report.write(config, "hostile", out)
    page = out.read_text()
    live = dashboard.experiment_page(config, "hostile", None, refresh_s=10)
    for text in (page, live):
        assert len(text) < 2_000_000, len(text)
        assert "<script>alert" not in text and "<iframe src=javascript" not in text
        assert "|" * 1000 not in text  # the 1 MB label is cut everywhere, the plots too
        assert "&lt;iframe" in text
    # the drift plot names the 8 most frequent labels and folds the rest into "(other)"
    assert "(other)" in live
