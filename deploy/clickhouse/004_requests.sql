-- Mirrored requests (inputs after redaction), stored for experiments whose gates watch
-- feature drift (`gates.max_feature_psi`). One row per (experiment, request).
CREATE TABLE IF NOT EXISTS {db}.requests
(
    event_time   DateTime64(3, 'UTC'),
    experiment   LowCardinality(String),
    request_id   String,
    unit_id      Nullable(String),
    arm          Nullable(String),
    arm_weight   Nullable(Float64),
    inputs       String COMMENT 'JSON object',
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (experiment, request_id)
SETTINGS non_replicated_deduplication_window = 1000;
