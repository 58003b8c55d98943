-- Every figure a gate judges, per candidate of one experiment, over a time range.
-- The gates (shadowline gate check) and the dashboards read this same query.
-- Latency figures of the candidate use only latencies measured on one request
-- (candidate_timing = 'request': latency probes, inputs run alone, in-process calls),
-- never a batch call's time divided by its size. The largest latencies of each side
-- (`*_top_ms`, descending: at least the top 3 % + 50) feed the p99 confidence bounds.
-- Parameters: {experiment:String}, {candidate:String} ('' = every candidate),
--   {since:DateTime64(3)}, {until:DateTime64(3)} (event_time range, since inclusive),
--   {latency_limit_ms:Float64} (the p99 limit: requests slower than this are counted).
WITH
    answered AS (
        SELECT *
        FROM {db}.comparisons_final
        WHERE experiment = {experiment:String}
          AND ({candidate:String} = '' OR candidate_model = {candidate:String})
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    ),
    timed AS (
        SELECT *, candidate_latency_ms IS NOT NULL AND candidate_timing = 'request' AS cand_timed
        FROM answered
    ),
    -- The candidate's errors summed per assignment unit (as in arm_figures.sql): the
    -- absolute error rule derives from them how much more the rate varies than if
    -- requests were independent. A request without a unit is a unit of its own.
    per_unit AS (
        SELECT candidate_model, toFloat64(count()) AS n, toFloat64(countIf(candidate_failed)) AS e
        FROM answered
        WHERE status NOT IN ('missing_candidate', 'missing_production', 'missing_both')
        GROUP BY candidate_model, coalesce(nullIf(unit_id, ''), concat('\0request\0', request_id))
    ),
    units AS (
        SELECT candidate_model, count() AS units, max(toUInt64(n)) AS most_requests_per_unit,
               sum(e * e) AS candidate_errors_sq, sum(n * e) AS candidate_errors_cross,
               sum(n * n) AS pairs_sq
        FROM per_unit
        GROUP BY candidate_model
    ),
    figures AS (
SELECT
    candidate_model,
    any(production_model)                                                  AS production_model,
    count()                                                                AS rows,
    -- both sides answered (with an output or an error): the sample the rules judge
    countIf(status NOT IN ('missing_candidate', 'missing_production', 'missing_both')) AS pairs,
    countIf(status IN ('missing_candidate', 'missing_both'))               AS missing_candidate,
    countIf(status IN ('missing_production', 'missing_both'))              AS missing_production,
    countIf(candidate_failed AND status NOT IN ('missing_candidate', 'missing_production', 'missing_both')) AS candidate_errors,
    countIf(production_failed AND status NOT IN ('missing_candidate', 'missing_production', 'missing_both')) AS production_errors,
    countIf(candidate_failed AND NOT production_failed AND status NOT IN ('missing_candidate', 'missing_production', 'missing_both')) AS candidate_only_errors,
    countIf(production_failed AND NOT candidate_failed AND status NOT IN ('missing_candidate', 'missing_production', 'missing_both')) AS production_only_errors,
    countIf(cand_timed)                                                    AS candidate_latencies,
    countIf(candidate_latency_ms IS NOT NULL AND NOT cand_timed)           AS candidate_batch_latencies,
    countIf(production_latency_ms IS NOT NULL)                             AS production_latencies,
    quantileExactIf(0.5)(candidate_latency_ms, cand_timed)                 AS candidate_p50_ms,
    quantileExactIf(0.95)(candidate_latency_ms, cand_timed)                AS candidate_p95_ms,
    quantileExactIf(0.99)(candidate_latency_ms, cand_timed)                AS candidate_p99_ms,
    quantileExactIf(0.5)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p50_ms,
    quantileExactIf(0.95)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p95_ms,
    quantileExactIf(0.99)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p99_ms,
    quantileExactIf(0.5)(latency_delta_ms, latency_delta_ms IS NOT NULL AND cand_timed)  AS latency_delta_p50_ms,
    quantileExactIf(0.99)(latency_delta_ms, latency_delta_ms IS NOT NULL AND cand_timed) AS latency_delta_p99_ms,
    countIf(cand_timed AND candidate_latency_ms > {latency_limit_ms:Float64}) AS candidate_slow,
    arraySlice(arrayReverseSort(groupArrayIf(assumeNotNull(candidate_latency_ms), cand_timed)),
               1, toUInt64(ceil(countIf(cand_timed) * 0.03) + 50))    AS candidate_top_ms,
    arraySlice(arrayReverseSort(groupArrayIf(assumeNotNull(production_latency_ms),
                                             production_latency_ms IS NOT NULL)),
               1, toUInt64(ceil(countIf(production_latency_ms IS NOT NULL) * 0.03) + 50))
                                                                           AS production_top_ms,
    countIf(agree IS NOT NULL)                                             AS compared,
    countIf(agree)                                                         AS agreed,
    avgIf(divergence, divergence IS NOT NULL)                              AS mean_divergence,
    min(event_time)                                                        AS first_event,
    max(event_time)                                                        AS last_event
FROM timed
GROUP BY candidate_model
    )
SELECT figures.*, units.units, units.most_requests_per_unit, units.candidate_errors_sq,
       units.candidate_errors_cross, units.pairs_sq
FROM figures
LEFT JOIN units ON figures.candidate_model = units.candidate_model
ORDER BY figures.candidate_model
