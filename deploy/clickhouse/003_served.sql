-- What A/B and canary arms actually served: one row per (experiment, request) from the
-- tap's `arm` predictions (the model that answered the user, its latency and error).
-- Gates compare arms on it; ReplacingMergeTree absorbs replays.
CREATE TABLE IF NOT EXISTS {db}.served
(
    event_time   DateTime64(3, 'UTC'),
    experiment   LowCardinality(String),
    request_id   String,
    model        LowCardinality(String) COMMENT 'the arm: the model that served the request',
    output       Nullable(String) COMMENT 'JSON',
    latency_ms   Float64,
    error        Nullable(String),
    unit_id      Nullable(String) COMMENT 'assignment unit (user, session): the arm rules count units',
    failed       Bool MATERIALIZED error IS NOT NULL,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (experiment, request_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Tables made before served rows carried their unit get the column; their rows read
-- NULL and count as one unit each (what the arm rules assumed then). OR REPLACE: a view
-- made by an earlier version fixed its columns when it was made, so it is made again.
ALTER TABLE {db}.served
    ADD COLUMN IF NOT EXISTS unit_id Nullable(String) AFTER error;

CREATE OR REPLACE VIEW {db}.served_final AS
SELECT *, failed FROM {db}.served FINAL;

-- Every routing decision published on the control topic (canary steps, promotions,
-- holds, rollbacks, manual changes), in order of version.
CREATE TABLE IF NOT EXISTS {db}.rollout_events
(
    event_time   DateTime64(3, 'UTC'),
    experiment   LowCardinality(String),
    version      UInt64,
    step         Nullable(UInt32),
    weights      Map(String, Float64) COMMENT 'arm -> share of traffic',
    weight       Float64 COMMENT 'total share of the candidate arms',
    verdict      Nullable(String),
    reason       Nullable(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (experiment, version);

-- Labels, clicks and conversions by request. The value is part of the key: two clicks on
-- one list in the same millisecond are two events; only exact replays collapse.
CREATE TABLE IF NOT EXISTS {db}.feedback
(
    event_time   DateTime64(3, 'UTC'),
    experiment   LowCardinality(String),
    request_id   String,
    kind         LowCardinality(String) COMMENT 'label | click | conversion',
    value        String COMMENT 'JSON',
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (experiment, request_id, kind, event_time, value);
