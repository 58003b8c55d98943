-- Business outcomes per arm of an A/B or canary experiment: what each arm served,
-- joined with the feedback for those requests that arrived within the feedback window
-- (`feedback_window_s` after the request was served). Labels and conversions are also
-- summed per assignment unit (as errors in arm_figures.sql): `units`,
-- `converted_sq`/`converted_cross`/`requests_sq` for the conversion rate over requests,
-- `correct_sq`/`correct_cross`/`labelled_sq` for accuracy over labels.
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {feedback_window_s:UInt32}
WITH
    joined AS (
        SELECT
            s.model AS arm, s.request_id AS request_id, s.output AS output,
            coalesce(nullIf(s.unit_id, ''), concat('\0request\0', s.request_id)) AS unit,
            f.kind AS kind, f.value AS value, f.event_time AS feedback_time,
            f.event_time <= s.event_time + toIntervalSecond({feedback_window_s:UInt32})
                AND f.request_id != '' AS in_window
        FROM {db}.served_final AS s
        LEFT JOIN (SELECT * FROM {db}.feedback FINAL WHERE experiment = {experiment:String}) AS f
            ON s.request_id = f.request_id
        WHERE s.experiment = {experiment:String}
          AND s.event_time >= {since:DateTime64(3)} AND s.event_time < {until:DateTime64(3)}
    ),
    per_request AS (
        SELECT
            arm, request_id, any(output) AS output, any(unit) AS unit,
            argMaxIf(value, feedback_time, kind = 'label' AND in_window)        AS label,
            countIf(kind = 'label' AND in_window) > 0                         AS is_labelled,
            countIf(kind = 'click' AND in_window) > 0                         AS is_clicked,
            countIf(kind = 'conversion' AND in_window) > 0                    AS is_converted,
            sumIf(toFloat64OrZero(value), kind = 'conversion' AND in_window)  AS request_value
        FROM joined
        GROUP BY arm, request_id
    ),
    per_unit AS (
        SELECT
            arm,
            toFloat64(count())                                                       AS n,
            toFloat64(countIf(is_converted))                                         AS conv,
            toFloat64(countIf(is_labelled))                                          AS lab,
            toFloat64(countIf(is_labelled AND JSONExtractRaw(output, 'label') = label)) AS cor
        FROM per_request
        GROUP BY arm, unit
    ),
    units AS (
        SELECT
            arm,
            count()           AS units,
            sum(conv * conv)  AS converted_sq,
            sum(n * conv)     AS converted_cross,
            sum(n * n)        AS requests_sq,
            sum(cor * cor)    AS correct_sq,
            sum(lab * cor)    AS correct_cross,
            sum(lab * lab)    AS labelled_sq
        FROM per_unit
        GROUP BY arm
    ),
    arms AS (
        SELECT
            arm,
            count()                                                          AS requests,
            countIf(is_labelled)                                             AS labelled,
            countIf(is_labelled AND JSONExtractRaw(output, 'label') = label) AS correct,
            countIf(is_clicked)                                              AS clicked,
            countIf(is_converted)                                            AS converted,
            sum(request_value)                                               AS conversion_value,
            clicked / requests                                               AS click_rate,
            converted / requests                                             AS conversion_rate,
            if(labelled > 0, correct / labelled, NULL)                       AS accuracy
        FROM per_request
        GROUP BY arm
    )
SELECT arms.*, units.units, units.converted_sq, units.converted_cross, units.requests_sq,
       units.correct_sq, units.correct_cross, units.labelled_sq
FROM arms
INNER JOIN units ON arms.arm = units.arm
ORDER BY arms.arm
