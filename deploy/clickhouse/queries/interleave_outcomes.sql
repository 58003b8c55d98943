-- Team-draft interleaving outcomes of each candidate against production, over a range.
-- A click (feedback kind 'click', value = the clicked item's ID, within
-- `feedback_window_s` of the request) is credited to the model that placed the item.
-- Per request and candidate: a win when the candidate's items got more clicks than
-- production's, a loss when fewer, a tie when equal (including no clicks).
-- Parameters: {experiment:String}, {production:String}, {since:DateTime64(3)},
--   {until:DateTime64(3)}, {feedback_window_s:UInt32}
WITH
    served AS (
        SELECT request_id, event_time, items, teams
        FROM {db}.interleaved FINAL
        WHERE experiment = {experiment:String}
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
    ),
    clicks AS (
        SELECT
            s.request_id AS request_id,
            -- the team of the clicked item; '' when the item was not in the served list
            arrayElement(s.teams, indexOf(s.items,
                if(JSONType(f.value) = 'String', JSONExtractString(f.value), f.value))) AS team
        FROM served AS s
        INNER JOIN (
            SELECT request_id, value, event_time FROM {db}.feedback FINAL
            WHERE experiment = {experiment:String} AND kind = 'click'
        ) AS f ON s.request_id = f.request_id
        WHERE f.event_time <= s.event_time + toIntervalSecond({feedback_window_s:UInt32})
    ),
    credit AS (
        SELECT request_id, team, count() AS n FROM clicks WHERE team != '' GROUP BY request_id, team
    ),
    per_pair AS (
        SELECT
            cand AS candidate_model,
            s.request_id AS request_id,
            sumIf(c.n, c.team = cand) AS cand_n,
            sumIf(c.n, c.team = {production:String}) AS prod_n
        FROM served AS s
        ARRAY JOIN arrayDistinct(arrayFilter(t -> t != {production:String}, s.teams)) AS cand
        LEFT JOIN credit AS c ON s.request_id = c.request_id
        GROUP BY candidate_model, request_id
    )
SELECT
    candidate_model,
    count()                                           AS impressions,
    countIf(cand_n > prod_n)                          AS wins,
    countIf(cand_n < prod_n)                          AS losses,
    countIf(cand_n = prod_n)                          AS ties,
    sum(cand_n)                                       AS candidate_clicks,
    sum(prod_n)                                       AS production_clicks,
    if(wins + losses > 0, wins / (wins + losses), NULL) AS win_share
FROM per_pair
GROUP BY candidate_model
ORDER BY candidate_model
