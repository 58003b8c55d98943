-- The models of every configured experiment and their roles, written by the sink from
-- its config when it starts (the latest write wins), so views can tell a candidate
-- from the secondary that measures production's own noise.
CREATE TABLE IF NOT EXISTS {db}.experiment_models
(
    experiment   LowCardinality(String),
    model        String,
    role         LowCardinality(String) COMMENT 'production | candidate | secondary',
    mode         LowCardinality(String),
    output       LowCardinality(String),
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (experiment, model);

-- Noise cancellation per minute: each candidate's disagreement with production and
-- mean divergence, minus the secondary's (production compared with itself) in the
-- same minute. Only experiments with a secondary have rows.
CREATE VIEW IF NOT EXISTS {db}.excess_divergence_minutely AS
WITH
    per_minute AS (
        SELECT experiment, candidate_model, toStartOfMinute(event_time) AS minute,
               avgIf(divergence, divergence IS NOT NULL)          AS mean_divergence,
               1 - avgIf(agree, agree IS NOT NULL)                AS disagreement
        FROM {db}.comparisons_final
        GROUP BY experiment, candidate_model, minute
    ),
    secondaries AS (
        SELECT experiment, model FROM {db}.experiment_models FINAL WHERE role = 'secondary'
    ),
    baseline AS (
        SELECT p.experiment AS experiment, p.minute AS minute,
               p.mean_divergence AS mean_divergence, p.disagreement AS disagreement
        FROM per_minute AS p
        INNER JOIN secondaries AS s
            ON p.experiment = s.experiment AND p.candidate_model = s.model
    )
SELECT
    c.experiment                                  AS experiment,
    c.candidate_model                             AS candidate_model,
    c.minute                                      AS minute,
    c.mean_divergence - b.mean_divergence         AS excess_divergence,
    c.disagreement - b.disagreement               AS excess_disagreement,
    b.mean_divergence                             AS baseline_divergence,
    b.disagreement                                AS baseline_disagreement
FROM per_minute AS c
INNER JOIN baseline AS b ON c.experiment = b.experiment AND c.minute = b.minute
WHERE (c.experiment, c.candidate_model) NOT IN (SELECT experiment, model FROM secondaries);
