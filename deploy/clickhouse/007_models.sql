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

-- Team-draft interleaving per minute: for each candidate of an interleaved ranker, the
-- requests it won, lost and tied against production on clicks (credited to the model
-- that placed the clicked item). Every click counts here; the gate's query also
-- applies the experiment's feedback window.
CREATE VIEW IF NOT EXISTS {db}.interleave_minutely AS
WITH
    served AS (
        SELECT i.experiment AS experiment, i.request_id AS request_id,
               i.event_time AS event_time, i.items AS items, i.teams AS teams,
               p.model AS production
        FROM {db}.interleaved AS i FINAL
        INNER JOIN (
            SELECT experiment, model FROM {db}.experiment_models FINAL WHERE role = 'production'
        ) AS p ON i.experiment = p.experiment
    ),
    credit AS (
        SELECT s.experiment AS experiment, s.request_id AS request_id,
               arrayElement(s.teams, indexOf(s.items,
                   if(JSONType(f.value) = 'String', JSONExtractString(f.value), f.value))) AS team,
               count() AS n
        FROM served AS s
        INNER JOIN (
            SELECT experiment, request_id, value FROM {db}.feedback FINAL WHERE kind = 'click'
        ) AS f ON s.experiment = f.experiment AND s.request_id = f.request_id
        GROUP BY experiment, request_id, team
    ),
    per_pair AS (
        SELECT s.experiment AS experiment, toStartOfMinute(s.event_time) AS minute,
               cand AS candidate_model, s.request_id AS request_id,
               sumIf(c.n, c.team = cand) AS cand_n, sumIf(c.n, c.team = s.production) AS prod_n
        FROM served AS s
        ARRAY JOIN arrayDistinct(arrayFilter(t -> t != s.production, s.teams)) AS cand
        LEFT JOIN credit AS c ON s.experiment = c.experiment AND s.request_id = c.request_id
        GROUP BY experiment, minute, candidate_model, request_id
    )
SELECT
    experiment, minute, candidate_model,
    count()                                                   AS impressions,
    countIf(cand_n > prod_n)                                  AS wins,
    countIf(cand_n < prod_n)                                  AS losses,
    countIf(cand_n = prod_n)                                  AS ties,
    if(wins + losses > 0, wins / (wins + losses), NULL)       AS win_share
FROM per_pair
GROUP BY experiment, minute, candidate_model;
