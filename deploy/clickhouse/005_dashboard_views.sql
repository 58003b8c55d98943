-- Per-minute series the dashboards plot (Grafana panels and `shadowline dashboard`
-- select from these views, so every panel's number has one definition here).

-- Pairs, missing sides, errors, agreement, divergence and latencies per candidate.
-- OR REPLACE: a warehouse made by an earlier version gets this definition at start.
CREATE OR REPLACE VIEW {db}.comparisons_minutely AS
SELECT
    experiment,
    candidate_model,
    toStartOfMinute(event_time)                                                    AS minute,
    count()                                                                        AS pairs,
    countIf(status IN ('missing_candidate', 'missing_production', 'missing_both')) AS missing,
    countIf(candidate_failed)                                                      AS candidate_errors,
    countIf(production_failed)                                                     AS production_errors,
    countIf(candidate_failed) / count()                                            AS candidate_error_rate,
    countIf(production_failed) / count()                                           AS production_error_rate,
    countIf(status IN ('missing_candidate', 'missing_production', 'missing_both')) / count() AS missing_rate,
    avgIf(agree, agree IS NOT NULL)                                                AS agreement,
    avgIf(divergence, divergence IS NOT NULL)                                      AS mean_divergence,
    quantileExactIf(0.5)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p50_ms,
    quantileExactIf(0.99)(production_latency_ms, production_latency_ms IS NOT NULL) AS production_p99_ms,
    -- candidate latencies timed on one request only (not a batch's time / its size)
    quantileExactIf(0.5)(candidate_latency_ms, candidate_timing = 'request')       AS candidate_p50_ms,
    quantileExactIf(0.99)(candidate_latency_ms, candidate_timing = 'request')      AS candidate_p99_ms
FROM {db}.comparisons_final
GROUP BY experiment, candidate_model, minute;

-- Share of each predicted label per minute, for production and each candidate: output
-- drift over time (the gate's PSI/JSD are computed from the same labels).
CREATE VIEW IF NOT EXISTS {db}.output_labels_minutely AS
SELECT experiment, candidate_model, minute, side, label, n,
       n / sum(n) OVER (PARTITION BY experiment, candidate_model, minute, side) AS share
FROM (
    SELECT experiment, candidate_model, toStartOfMinute(event_time) AS minute,
           side, JSONExtractString(out, 'label') AS label, count() AS n
    FROM {db}.comparisons_final
    ARRAY JOIN [production_output, candidate_output] AS out,
               ['production', 'candidate'] AS side
    WHERE out IS NOT NULL
    GROUP BY experiment, candidate_model, minute, side, label
);

-- What each arm served per minute (A/B, canary).
CREATE VIEW IF NOT EXISTS {db}.served_minutely AS
SELECT
    experiment,
    model                           AS arm,
    toStartOfMinute(event_time)     AS minute,
    count()                         AS requests,
    countIf(failed) / count()       AS error_rate,
    quantileExact(0.5)(latency_ms)  AS p50_ms,
    quantileExact(0.99)(latency_ms) AS p99_ms
FROM {db}.served_final
GROUP BY experiment, arm, minute;

-- The rollout's weight and verdict over time.
CREATE VIEW IF NOT EXISTS {db}.rollout_timeline AS
SELECT event_time, experiment, version, step, weight, verdict, reason
FROM {db}.rollout_events FINAL;
