-- The gate figures of A/B and canary experiments: per arm (the model that served),
-- over a time range, from what the arms actually served to users (latencies measured
-- by the serving process, one request each). The largest latencies of each arm
-- (`top_ms`, descending: at least the top 3 % + 50) feed the p99 confidence bounds.
-- The router assigns units (users, sessions), not requests, so each arm's errors are
-- also summed per unit (`units`, `errors_sq` = sum of each unit's errors squared,
-- `errors_cross` = sum of its requests times its errors, `requests_sq`): the rules
-- derive from them how much more an arm's error rate varies than if its requests were
-- independent. A row without a unit counts as a unit of its own.
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {latency_limit_ms:Float64}
WITH
    in_range AS (
        SELECT model, request_id, unit_id, latency_ms, failed, event_time
        FROM {db}.served_final
        WHERE experiment = {experiment:String}
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    ),
    per_unit AS (
        SELECT model, toFloat64(count()) AS n, toFloat64(countIf(failed)) AS e
        FROM in_range
        GROUP BY model, coalesce(nullIf(unit_id, ''), concat('\0request\0', request_id))
    ),
    units AS (
        SELECT
            model                          AS arm,
            count()                        AS units,
            max(toUInt64(n))               AS most_requests_per_unit,
            sum(e * e)                     AS errors_sq,
            sum(n * e)                     AS errors_cross,
            sum(n * n)                     AS requests_sq
        FROM per_unit
        GROUP BY model
    ),
    arms AS (
        SELECT
            model                                                         AS arm,
            count()                                                       AS requests,
            countIf(failed)                                               AS errors,
            quantileExact(0.5)(latency_ms)                                AS p50_ms,
            quantileExact(0.95)(latency_ms)                               AS p95_ms,
            quantileExact(0.99)(latency_ms)                               AS p99_ms,
            countIf(latency_ms > {latency_limit_ms:Float64})              AS slow,
            arraySlice(arrayReverseSort(groupArray(latency_ms)), 1,
                       toUInt64(ceil(count() * 0.03) + 50))               AS top_ms,
            min(event_time)                                               AS first_event,
            max(event_time)                                               AS last_event
        FROM in_range
        GROUP BY model
    )
SELECT arms.*, units.units, units.most_requests_per_unit, units.errors_sq,
       units.errors_cross, units.requests_sq
FROM arms
INNER JOIN units ON arms.arm = units.arm
ORDER BY arms.arm
