-- The comparisons table: one row per (experiment, request, candidate) once read
-- with FINAL (or through the comparisons_final view). ReplacingMergeTree keeps
-- the highest `revision`, so a late correction replaces the first verdict and a
-- replayed batch (same revision) collapses to one row.
CREATE TABLE IF NOT EXISTS {db}.comparisons
(
    event_time            DateTime64(3, 'UTC') COMMENT 'when the request was served',
    experiment            LowCardinality(String),
    request_id            String,
    production_model      LowCardinality(String),
    candidate_model       LowCardinality(String),
    status                LowCardinality(String) COMMENT 'matched | candidate_error | production_error | both_error | missing_candidate | missing_production | missing_both | late',
    revision              UInt32 COMMENT '0 first verdict, >0 late correction',
    output_type           LowCardinality(String),
    agree                 Nullable(Bool),
    divergence            Nullable(Float64),
    metrics               Map(LowCardinality(String), Float64),
    production_output     Nullable(String) COMMENT 'JSON',
    candidate_output      Nullable(String) COMMENT 'JSON',
    production_latency_ms Nullable(Float64),
    candidate_latency_ms  Nullable(Float64),
    candidate_timing      LowCardinality(Nullable(String)) COMMENT 'request (timed alone: what the latency rules read) | batch_share (batch time / size)',
    latency_delta_ms      Nullable(Float64) COMMENT 'candidate - production on the same request',
    production_error      Nullable(String),
    candidate_error       Nullable(String),
    production_failed     Bool MATERIALIZED production_error IS NOT NULL,
    candidate_failed      Bool MATERIALIZED candidate_error IS NOT NULL,
    unit_id               Nullable(String),
    arm                   Nullable(String),
    joined_at             DateTime64(3, 'UTC'),
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(event_time)
ORDER BY (experiment, candidate_model, request_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Tables made before latencies carried their timing get the column (a no-op on tables
-- made by the statement above), before any view reads it. Rows stored before it read
-- NULL: the workers then shared a batch's time among its inputs, so the latency rules
-- skip them.
ALTER TABLE {db}.comparisons
    ADD COLUMN IF NOT EXISTS candidate_timing LowCardinality(Nullable(String))
    AFTER candidate_latency_ms;
