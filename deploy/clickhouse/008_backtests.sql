-- Backtest runs (`shadowline backtest`): their rows sit in comparisons under the name
-- EXPERIMENT@backtest:RUN, so no live view or verdict mixes them in. This view lists
-- each run beside the experiment it replayed, with its headline figures; the gate's
-- verdict on a run is `shadowline gate check EXPERIMENT@backtest:RUN`.
CREATE VIEW IF NOT EXISTS {db}.backtest_runs AS
SELECT
    splitByString('@backtest:', stored_as)[1]                  AS experiment,
    splitByString('@backtest:', stored_as)[2]                  AS run,
    stored_as,
    candidate_model,
    count()                                                    AS rows,
    countIf(status = 'matched')                                AS matched,
    countIf(status IN ('candidate_error', 'both_error'))       AS candidate_errors,
    countIf(status = 'missing_production')                     AS missing_production,
    avgIf(agree, agree IS NOT NULL)                            AS agreement,
    avgIf(divergence, divergence IS NOT NULL)                  AS mean_divergence,
    min(event_time)                                            AS first_event,
    max(event_time)                                            AS last_event,
    max(inserted_at)                                           AS stored_at
FROM (
    -- Renamed first: an alias named like a column would stand for it in WHERE.
    SELECT experiment AS stored_as, candidate_model, status, agree, divergence, event_time,
           inserted_at
    FROM {db}.comparisons_final
    WHERE position(experiment, '@backtest:') > 0
)
GROUP BY stored_as, candidate_model;
