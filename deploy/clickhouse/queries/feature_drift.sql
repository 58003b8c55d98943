-- Drift of every numeric input feature between a reference window and the evaluated
-- range: the current values binned by the reference's deciles, with the population
-- stability index per feature (shares floored at 1e-4 and renormalised).
-- Parameters: {experiment:String}, {reference_since:DateTime64(3)},
--   {since:DateTime64(3)} (end of the reference, start of the range), {until:DateTime64(3)}
WITH
    values AS (
        SELECT kv.1 AS feature, toFloat64OrNull(kv.2) AS x,
               event_time >= {since:DateTime64(3)} AS current
        FROM {db}.requests FINAL
        ARRAY JOIN JSONExtractKeysAndValuesRaw(inputs) AS kv
        WHERE experiment = {experiment:String}
          AND event_time >= {reference_since:DateTime64(3)}
          AND event_time < {until:DateTime64(3)}
    ),
    numeric AS (SELECT * FROM values WHERE x IS NOT NULL AND isFinite(x)),
    edges AS (
        SELECT feature,
               arraySort(arrayDistinct(quantilesExact(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)(x))) AS e
        FROM numeric WHERE NOT current GROUP BY feature
    ),
    counts AS (
        SELECT n.feature AS feature, arrayCount(v -> v < n.x, d.e) AS bin,
               countIf(NOT n.current) AS e_n, countIf(n.current) AS a_n
        FROM numeric AS n INNER JOIN edges AS d ON n.feature = d.feature
        GROUP BY feature, bin
    ),
    shares AS (
        SELECT feature, bin, e_n, a_n,
               greatest(e_n / sum(e_n) OVER w, 1e-4) AS e_floor,
               greatest(a_n / greatest(sum(a_n) OVER w, 1), 1e-4) AS a_floor
        FROM counts
        WINDOW w AS (PARTITION BY feature)
    ),
    normalised AS (
        SELECT feature, e_n, a_n,
               e_floor / sum(e_floor) OVER w AS e2, a_floor / sum(a_floor) OVER w AS a2
        FROM shares
        WINDOW w AS (PARTITION BY feature)
    )
SELECT
    feature,
    sum(e_n)                          AS reference,
    sum(a_n)                          AS current,
    sum((a2 - e2) * log(a2 / e2))     AS psi
FROM normalised
GROUP BY feature
ORDER BY psi DESC, feature
