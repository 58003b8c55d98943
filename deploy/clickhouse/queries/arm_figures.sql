-- The gate figures of A/B and canary experiments: per arm (the model that served),
-- over a time range, from what the arms actually served to users (latencies measured
-- by the serving process, one request each). The largest latencies of each arm
-- (`top_ms`, descending: at least the top 3 % + 50) feed the p99 confidence bounds.
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {latency_limit_ms:Float64}
SELECT
    model                                                         AS arm,
    count()                                                       AS requests,
    countIf(failed)                                               AS errors,
    quantileExact(0.5)(latency_ms)                                AS p50_ms,
    quantileExact(0.95)(latency_ms)                               AS p95_ms,
    quantileExact(0.99)(latency_ms)                               AS p99_ms,
    countIf(latency_ms > {latency_limit_ms:Float64})              AS slow,
    arraySlice(arrayReverseSort(groupArray(latency_ms)), 1, toUInt64(ceil(count() * 0.03) + 50))
                                                                  AS top_ms,
    min(event_time)                                               AS first_event,
    max(event_time)                                               AS last_event
FROM {db}.served_final
WHERE experiment = {experiment:String}
  AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
GROUP BY model
ORDER BY model
