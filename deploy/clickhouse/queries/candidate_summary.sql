-- Per-candidate summary of one experiment (the demo prints this; dashboards reuse it).
-- Parameters: {experiment:String}
SELECT
    candidate_model,
    any(production_model)                                             AS production_model,
    count()                                                           AS pairs,
    countIf(status = 'matched')                                       AS matched,
    countIf(status IN ('missing_candidate', 'missing_production', 'missing_both')) AS missing,
    countIf(status = 'late')                                          AS late,
    countIf(candidate_failed)                                         AS candidate_errors,
    countIf(production_failed)                                        AS production_errors,
    avgIf(agree, agree IS NOT NULL)                                   AS agreement_rate,
    avgIf(divergence, divergence IS NOT NULL)                         AS mean_divergence,
    quantileExactIf(0.5)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p50_ms,
    quantileExactIf(0.99)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p99_ms,
    -- candidate latencies timed on one request only (not a batch's time / its size)
    quantileExactIf(0.5)(candidate_latency_ms, candidate_timing = 'request')       AS candidate_p50_ms,
    quantileExactIf(0.99)(candidate_latency_ms, candidate_timing = 'request')      AS candidate_p99_ms,
    quantileExactIf(0.5)(latency_delta_ms, candidate_timing = 'request')           AS latency_delta_p50_ms,
    quantileExactIf(0.99)(latency_delta_ms, candidate_timing = 'request')          AS latency_delta_p99_ms
FROM {db}.comparisons_final
WHERE experiment = {experiment:String}
GROUP BY candidate_model
ORDER BY candidate_model
