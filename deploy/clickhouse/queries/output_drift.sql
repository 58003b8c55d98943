-- Drift between the candidate's and production's outputs, per candidate, over the
-- same requests. Each output falls in a bin: the predicted label (classification,
-- probabilities), production's deciles (regression), the top item (rankings), or the
-- length class of the text, floor(log2(characters + 1)) (text: a candidate that
-- answers much longer or shorter, or empty, moves shares between length classes).
-- Per bin: each side's count (the marginal distributions, with the population
-- stability index, shares floored at 1e-4 and renormalised, and the Jensen-Shannon
-- divergence, base 2, as descriptive figures), and the paired counts the gate's
-- sequential test reads: `up` requests where only the candidate's output is in the
-- bin, `down` those where only production's is.
-- Parameters: {experiment:String}, {candidate:String} ('' = every candidate),
--   {since:DateTime64(3)}, {until:DateTime64(3)}
WITH
    answered AS (
        SELECT candidate_model, output_type, production_output, candidate_output
        FROM {db}.comparisons_final
        WHERE experiment = {experiment:String}
          AND ({candidate:String} = '' OR candidate_model = {candidate:String})
          AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
          AND production_output IS NOT NULL AND candidate_output IS NOT NULL
    ),
    deciles AS (
        SELECT candidate_model,
               arraySort(arrayDistinct(quantilesExact(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)(
                   toFloat64OrNull(production_output)))) AS edges
        FROM answered WHERE output_type = 'regression' GROUP BY candidate_model
    ),
    binned AS (
        SELECT a.candidate_model AS candidate_model,
               arrayMap(out -> multiIf(
                   a.output_type = 'regression',
                   toString(arrayCount(e -> e < toFloat64OrZero(out), d.edges)),
                   -- rankings: the top item (bare ID, or the first of 'items')
                   a.output_type = 'ranking',
                   if(JSONHas(out, 'items'), JSONExtractRaw(out, 'items', 1), JSONExtractRaw(out, 1)),
                   a.output_type = 'text',
                   concat('length ', toString(toUInt32(floor(log2(lengthUTF8(
                       if(JSONType(out) = 'Object', JSONExtractString(out, 'text'),
                          JSONExtractString(out))) + 1))))),
                   JSONExtractString(out, 'label')),
                   [a.production_output, a.candidate_output]) AS bins
        FROM answered AS a
        LEFT JOIN deciles AS d ON a.candidate_model = d.candidate_model
    ),
    counts AS (
        SELECT candidate_model, bin,
               countIf(side = 0) AS e_n, countIf(side = 1) AS a_n,
               countIf(side = 1 AND other != bin) AS up_n,
               countIf(side = 0 AND other != bin) AS down_n
        FROM binned
        ARRAY JOIN bins AS bin, [0, 1] AS side, [bins[2], bins[1]] AS other
        GROUP BY candidate_model, bin
    ),
    shares AS (
        SELECT candidate_model, bin, e_n, a_n, up_n, down_n,
               e_n / sum(e_n) OVER w AS e, a_n / sum(a_n) OVER w AS a,
               greatest(e_n / sum(e_n) OVER w, 1e-4) AS e_floor,
               greatest(a_n / sum(a_n) OVER w, 1e-4) AS a_floor
        FROM counts
        WINDOW w AS (PARTITION BY candidate_model)
    ),
    normalised AS (
        SELECT candidate_model, bin, e_n, a_n, up_n, down_n, e, a,
               e_floor / sum(e_floor) OVER w AS e2, a_floor / sum(a_floor) OVER w AS a2,
               (e + a) / 2 AS m
        FROM shares
        WINDOW w AS (PARTITION BY candidate_model)
    )
SELECT
    candidate_model,
    sum(e_n)                                                     AS outputs,
    groupArray(bin)                                              AS bins,
    groupArray(e_n)                                              AS production_counts,
    groupArray(a_n)                                              AS candidate_counts,
    groupArray(up_n)                                             AS up_counts,
    groupArray(down_n)                                           AS down_counts,
    sum((a2 - e2) * log(a2 / e2))                                AS psi,
    0.5 * sum(if(e > 0, e * log2(e / m), 0)) + 0.5 * sum(if(a > 0, a * log2(a / m), 0)) AS jsd
FROM normalised
GROUP BY candidate_model
ORDER BY candidate_model
