-- Tables made before latencies carried their timing get the column (a no-op on
-- tables created from 001_comparisons.sql). Rows stored before it read NULL: they
-- were written before the workers timed requests alone, so the latency rules skip them.
ALTER TABLE {db}.comparisons
    ADD COLUMN IF NOT EXISTS candidate_timing LowCardinality(Nullable(String))
    AFTER candidate_latency_ms;
