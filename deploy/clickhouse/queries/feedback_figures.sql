-- Correctness from labels, per candidate of a shadow experiment: each comparison joined
-- with the latest `label` feedback for its request that arrived within the experiment's
-- feedback window after the request. Both models answered the same requests, so the
-- accuracy difference is paired.
-- Parameters: {experiment:String}, {candidate:String} ('' = every candidate),
--   {since:DateTime64(3)}, {until:DateTime64(3)}, {feedback_window_s:UInt32},
--   {labels_experiment:String} (whose labels: the experiment itself, or for a backtest's
--   rows the live experiment it replayed)
WITH
    judged AS (
        SELECT
            c.candidate_model AS candidate_model,
            c.request_id AS request_id,
            any(c.production_output) AS production_output,
            any(c.candidate_output) AS candidate_output,
            argMaxIf(f.value, f.event_time,
                     f.event_time <= c.event_time + toIntervalSecond({feedback_window_s:UInt32})
            ) AS label,
            countIf(f.event_time <= c.event_time + toIntervalSecond({feedback_window_s:UInt32}))
                AS labels
        FROM {db}.comparisons_final AS c
        INNER JOIN (
            SELECT * FROM {db}.feedback FINAL
            WHERE experiment = {labels_experiment:String} AND kind = 'label'
        ) AS f ON c.request_id = f.request_id
        WHERE c.experiment = {experiment:String}
          AND ({candidate:String} = '' OR c.candidate_model = {candidate:String})
          AND c.event_time >= {since:DateTime64(3)} AND c.event_time < {until:DateTime64(3)}
          AND c.production_output IS NOT NULL AND c.candidate_output IS NOT NULL
        GROUP BY c.candidate_model, c.request_id
        HAVING labels > 0
    ),
    correctness AS (
        SELECT candidate_model,
               JSONExtractRaw(production_output, 'label') = label AS prod_ok,
               JSONExtractRaw(candidate_output, 'label') = label AS cand_ok
        FROM judged
    )
SELECT
    candidate_model,
    count()                                                   AS labelled,
    countIf(prod_ok)                                          AS production_correct,
    countIf(cand_ok)                                          AS candidate_correct,
    countIf(prod_ok AND NOT cand_ok)                          AS production_only_correct,
    countIf(cand_ok AND NOT prod_ok)                          AS candidate_only_correct,
    production_correct / labelled                             AS production_accuracy,
    candidate_correct / labelled                              AS candidate_accuracy
FROM correctness
GROUP BY candidate_model
ORDER BY candidate_model
