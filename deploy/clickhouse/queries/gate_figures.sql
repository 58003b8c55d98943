-- Every figure a gate judges, per candidate of one experiment, over a time range.
-- The gates (shadowline gate check) and the dashboards read this same query.
-- Parameters: {experiment:String}, {candidate:String} ('' = every candidate),
--   {since:DateTime64(3)}, {until:DateTime64(3)} (event_time range, since inclusive),
--   {latency_limit_ms:Float64} (the p99 limit: requests slower than this are counted),
--   {latency_increase_ms:Float64} (allowed p99 increase over production).
WITH
    answered AS (
        SELECT *
        FROM {db}.comparisons_final
        WHERE experiment = {experiment:String}
          AND ({candidate:String} = '' OR candidate_model = {candidate:String})
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    ),
    production_p99 AS (
        SELECT candidate_model,
               quantileExactIf(0.99)(production_latency_ms, production_latency_ms IS NOT NULL) AS p99
        FROM answered GROUP BY candidate_model
    )
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
    countIf(candidate_latency_ms IS NOT NULL)                              AS candidate_latencies,
    countIf(production_latency_ms IS NOT NULL)                             AS production_latencies,
    quantileExactIf(0.5)(candidate_latency_ms, candidate_latency_ms IS NOT NULL)   AS candidate_p50_ms,
    quantileExactIf(0.95)(candidate_latency_ms, candidate_latency_ms IS NOT NULL)  AS candidate_p95_ms,
    quantileExactIf(0.99)(candidate_latency_ms, candidate_latency_ms IS NOT NULL)  AS candidate_p99_ms,
    quantileExactIf(0.5)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p50_ms,
    quantileExactIf(0.95)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p95_ms,
    quantileExactIf(0.99)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p99_ms,
    quantileExactIf(0.5)(latency_delta_ms, latency_delta_ms IS NOT NULL)   AS latency_delta_p50_ms,
    quantileExactIf(0.99)(latency_delta_ms, latency_delta_ms IS NOT NULL)  AS latency_delta_p99_ms,
    countIf(candidate_latency_ms > {latency_limit_ms:Float64})             AS candidate_slow,
    countIf(candidate_latency_ms > p.p99 + {latency_increase_ms:Float64})  AS candidate_slower_than_production_p99,
    countIf(agree IS NOT NULL)                                             AS compared,
    countIf(agree)                                                         AS agreed,
    avgIf(divergence, divergence IS NOT NULL)                              AS mean_divergence,
    min(event_time)                                                        AS first_event,
    max(event_time)                                                        AS last_event
FROM answered AS a
LEFT JOIN production_p99 AS p ON a.candidate_model = p.candidate_model
GROUP BY candidate_model
ORDER BY candidate_model
