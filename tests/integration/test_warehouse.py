"""The warehouse contract on the real engine: chDB in-process, read over ClickHouse HTTP."""

from __future__ import annotations

import pytest

from shadowline.config import parse_config
from shadowline.envelopes import now_ms
from shadowline.errors import WarehouseError
from shadowline.warehouse import COMPARISON_COLUMNS, Warehouse, named_query
from tests.conftest import free_port
from tests.fixtures.rows import comparison

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    # chDB allows one data directory per process: one owner for this module.
    config = parse_config(
        {"warehouse": {"path": str(tmp_path_factory.mktemp("wh")), "port": free_port()}}, env={}
    )
    wh = Warehouse.open_owner(config)
    server = wh.serve_http()
    yield wh
    server.shutdown()
    wh.close()


def row(rid: str, candidate: str = "c", status: str = "matched", revision: int = 1, **kw):
    return comparison(rid, candidate, status, revision, **kw)


def count(wh: Warehouse, experiment: str, final: bool = True) -> int:
    table = "comparisons_final" if final else "comparisons"
    return wh.query(
        f"SELECT count() AS n FROM {table} WHERE experiment = {{e:String}}", {"e": experiment}
    )[0]["n"]


def test_columns_match_the_contract(owner):
    cols = {r["name"] for r in owner.query("DESCRIBE TABLE comparisons")}
    assert set(COMPARISON_COLUMNS) <= cols
    for required in (
        "event_time",
        "experiment",
        "request_id",
        "production_model",
        "candidate_model",
        "status",
        "agree",
        "divergence",
        "production_latency_ms",
        "candidate_latency_ms",
        "latency_delta_ms",
        "production_error",
        "candidate_error",
        "production_output",
        "candidate_output",
    ):
        assert required in cols


def test_replayed_batches_add_no_rows(owner):
    batch = [row(f"r{i}", experiment="replay") for i in range(50)]
    owner.insert_comparisons(batch)
    owner.insert_comparisons(batch)  # same batch again: block deduplication
    owner.insert_comparisons(batch[10:30] + [row("r99", experiment="replay")])  # other boundaries
    assert count(owner, "replay") == 51
    # the raw table may hold versions; after a merge they collapse as well
    owner.command("OPTIMIZE TABLE comparisons FINAL")
    assert count(owner, "replay", final=False) == 51


def test_a_late_correction_replaces_the_missing_row(owner):
    owner.insert_comparisons(
        [
            row(
                "x",
                status="missing_candidate",
                revision=0,
                experiment="late",
                candidate_output=None,
                agree=None,
            )
        ]
    )
    owner.insert_comparisons([row("x", status="late", revision=3, experiment="late")])
    # a stray one-sided verdict after the joiner forgot the request must not win
    owner.insert_comparisons([row("x", status="missing_production", revision=0, experiment="late")])
    got = owner.query("SELECT status, revision FROM comparisons_final WHERE experiment = 'late'")
    assert got == [{"status": "late", "revision": 3}]


def test_readers_go_over_http_and_cannot_write(owner):
    owner.insert_comparisons([row(f"h{i}", experiment="http") for i in range(3)])
    reader = Warehouse.open_reader(owner.config)
    try:
        assert reader.owner is False
        assert count(reader, "http") == 3
        summary = reader.query(
            named_query("candidate_summary", owner.database), {"experiment": "http"}
        )
        assert summary[0]["pairs"] == 3 and summary[0]["agreement_rate"] == 1.0
        with pytest.raises(WarehouseError, match="read-only"):
            reader.query("INSERT INTO comparisons (request_id) VALUES ('evil')")
        with pytest.raises(WarehouseError, match="read-only"):
            reader.command("DROP TABLE comparisons")
        with pytest.raises(WarehouseError, match="UNKNOWN_TABLE|Unknown table"):
            reader.query("SELECT * FROM no_such_table")
    finally:
        reader.close()
    assert count(owner, "http") == 3


def test_server_backend_config_needs_a_reachable_server():
    config = parse_config(
        {"warehouse": {"backend": "clickhouse", "url": "http://u:secret@127.0.0.1:1/db"}}, env={}
    )
    with pytest.raises(WarehouseError) as err:
        Warehouse.open_reader(config)
    assert "secret" not in str(err.value)


def test_a_table_from_an_older_version_is_rebuilt_with_the_new_key(owner):
    """feedback's key gained `value` (two clicks in one millisecond are two events);
    a warehouse made before that is rebuilt at start, keeping its rows."""
    db = owner.database
    owner.command(f"DROP TABLE {db}.feedback")
    owner.command(
        f"CREATE TABLE {db}.feedback (event_time DateTime64(3, 'UTC'), "
        "experiment LowCardinality(String), request_id String, kind LowCardinality(String), "
        "value String, inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) "
        "ORDER BY (experiment, request_id, kind, event_time)"
    )
    t = now_ms()
    cols = ["event_time", "experiment", "request_id", "kind", "value"]
    owner.insert("feedback", cols, [[t, "wh", f"r{i}", "label", "1"] for i in range(50)])
    assert owner.rekey_tables() == ["feedback"]
    key = owner.query(
        "SELECT sorting_key FROM system.tables WHERE database = {d:String} AND name = 'feedback'",
        {"d": db},
    )
    assert key[0]["sorting_key"] == "experiment, request_id, kind, event_time, value"
    assert owner.query(f"SELECT count() AS n FROM {db}.feedback FINAL")[0]["n"] == 50
    # Two clicks on one list in the same millisecond now stay two; a replay still collapses.
    clicks = [[t, "wh", "q", "click", '"a"'], [t, "wh", "q", "click", '"b"']]
    owner.insert("feedback", cols, clicks)
    owner.insert("feedback", cols, clicks[:1])
    n = owner.query(f"SELECT count() AS n FROM {db}.feedback FINAL WHERE request_id = 'q'")
    assert n[0]["n"] == 2
    assert owner.rekey_tables() == []  # nothing left to do on the next start


def test_a_comparisons_table_from_before_timing_gets_the_column_and_keeps_its_rows(owner):
    """A warehouse made before latencies carried their timing: the DDL adds the column
    (old rows read NULL, which the latency rules skip) before the views need it."""
    from shadowline.warehouse import ddl_statements

    db = owner.database
    create = next(
        s for s in ddl_statements(db) if "TABLE IF NOT EXISTS shadowline.comparisons" in s
    )
    old = "\n".join(line for line in create.splitlines() if "candidate_timing" not in line)
    owner.command(f"DROP VIEW IF EXISTS {db}.comparisons_minutely")
    owner.command(f"DROP VIEW IF EXISTS {db}.comparisons_final")
    owner.command(f"DROP TABLE {db}.comparisons")
    owner.command(old)
    before = [c for c in COMPARISON_COLUMNS if c != "candidate_timing"]
    rows = [[r._avro_record()[c] for c in before] for r in (row("old-1", experiment="up"),)]
    owner.insert("comparisons", before, rows)
    for stmt in ddl_statements(db):  # what the sink does at start
        owner.command(stmt)
    got = owner.query(
        f"SELECT request_id, candidate_timing FROM {db}.comparisons_final WHERE experiment = 'up'"
    )
    assert got == [{"request_id": "old-1", "candidate_timing": None}]
    owner.insert_comparisons(
        [row("new-1", experiment="up", candidate_timing="request", candidate_latency_ms=7.0)]
    )
    minutely = owner.query(
        f"SELECT sum(pairs) AS n, max(candidate_p99_ms) AS p99 FROM {db}.comparisons_minutely "
        "WHERE experiment = 'up'"
    )[0]
    assert minutely["n"] == 2 and minutely["p99"] == 7.0  # only the row timed alone
    columns = [
        r["name"]
        for r in owner.query(
            "SELECT name FROM system.columns WHERE database = {d:String} AND table = 'comparisons' "
            "ORDER BY position",
            {"d": db},
        )
    ]
    assert columns.index("candidate_timing") == columns.index("candidate_latency_ms") + 1


def test_a_served_table_and_views_from_before_units_get_the_column(owner):
    """A warehouse made before served rows carried their unit, its views made then too
    (a view fixes its columns when made): the DDL adds the column and remakes the views,
    and old rows count as units of their own."""
    from shadowline.warehouse import ddl_statements

    db = owner.database
    statements = ddl_statements(db)
    create = next(s for s in statements if "TABLE IF NOT EXISTS shadowline.served\n" in s)
    old = "\n".join(line for line in create.splitlines() if "unit_id" not in line)
    for view in ("served_minutely", "served_final", "comparisons_minutely", "comparisons_final"):
        owner.command(f"DROP VIEW IF EXISTS {db}.{view}")
    owner.command(f"DROP TABLE {db}.served")
    owner.command(old)
    owner.command(f"CREATE VIEW {db}.served_final AS SELECT *, failed FROM {db}.served FINAL")
    owner.command(
        f"CREATE VIEW {db}.comparisons_final AS SELECT * EXCEPT candidate_timing, "
        f"production_failed, candidate_failed FROM {db}.comparisons FINAL"
    )
    t = now_ms()
    cols = ["event_time", "experiment", "request_id", "model", "output", "latency_ms", "error"]
    owner.insert("served", cols, [[t, "old-units", f"r{i}", "prod", "1", 1.0, None]
                                  for i in range(3)])  # fmt: skip
    for stmt in statements:  # what the sink does at start
        owner.command(stmt)
    got = owner.query(
        f"SELECT request_id, unit_id FROM {db}.served_final WHERE experiment = 'old-units' "
        "ORDER BY request_id"
    )
    assert got == [{"request_id": f"r{i}", "unit_id": None} for i in range(3)]
    assert owner.query(f"SELECT count(candidate_timing) AS n FROM {db}.comparisons_final")
    figures = owner.query(
        named_query("arm_figures", db),
        {"experiment": "old-units", "since": "2000-01-01 00:00:00",
         "until": "2100-01-01 00:00:00", "latency_limit_ms": 0.0},
    )  # fmt: skip
    assert [(f["requests"], f["units"]) for f in figures] == [(3, 3)]
