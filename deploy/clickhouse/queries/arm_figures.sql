-- The gate figures of A/B and canary experiments: per arm (the model that served),
-- over a time range, from what the arms actually served to users.
-- Parameters: {experiment:String}, {production:String} (the production model's name),
--   {since:DateTime64(3)}, {until:DateTime64(3)}, {latency_limit_ms:Float64},
--   {latency_increase_ms:Float64}, {baseline_since:DateTime64(3)} (where production's
--   p99 is taken from: `since` normally; earlier at a 100 % step, which has no
--   production traffic of its own)
WITH
    arms AS (
        SELECT *
        FROM {db}.served_final
        WHERE experiment = {experiment:String}
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    ),
    production_p99 AS (
        SELECT quantileExact(0.99)(latency_ms) AS p99
        FROM {db}.served_final
        WHERE experiment = {experiment:String} AND model = {production:String}
          AND event_time >= {baseline_since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    )
SELECT
    model                                                         AS arm,
    model = {production:String}                                   AS is_production,
    count()                                                       AS requests,
    countIf(failed)                                               AS errors,
    quantileExact(0.5)(latency_ms)                                AS p50_ms,
    quantileExact(0.95)(latency_ms)                               AS p95_ms,
    quantileExact(0.99)(latency_ms)                               AS p99_ms,
    countIf(latency_ms > {latency_limit_ms:Float64})              AS slow,
    countIf(latency_ms > (SELECT p99 FROM production_p99) + {latency_increase_ms:Float64})
                                                                  AS slower_than_production_p99,
    min(event_time)                                               AS first_event,
    max(event_time)                                               AS last_event
FROM arms
GROUP BY model
ORDER BY model
