-- What a team-draft interleaved ranking served: one row per (experiment, request) from
-- the `interleaved` predictions of shadowline.Interleave.rank(). `teams[i]` is the model
-- that placed `items[i]`; clicks on `feedback` are credited through it
-- (queries/interleave_outcomes.sql). ReplacingMergeTree absorbs replays.
CREATE TABLE IF NOT EXISTS {db}.interleaved
(
    event_time   DateTime64(3, 'UTC'),
    experiment   LowCardinality(String),
    request_id   String,
    seed         UInt64 COMMENT 'team-draft seed (from the request ID): rebuilds the merge',
    items        Array(String) COMMENT 'served item IDs, in order',
    teams        Array(LowCardinality(String)) COMMENT 'model that placed each item',
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (experiment, request_id);
