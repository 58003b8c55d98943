-- Business outcomes per arm of an A/B or canary experiment: what each arm served,
-- joined with the feedback for those requests that arrived within the feedback window
-- (`feedback_window_s` after the request was served).
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {feedback_window_s:UInt32}
WITH
    joined AS (
        SELECT
            s.model AS arm, s.request_id AS request_id, s.output AS output,
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
            arm, request_id, any(output) AS output,
            argMaxIf(value, feedback_time, kind = 'label' AND in_window)        AS label,
            countIf(kind = 'label' AND in_window) > 0                         AS is_labelled,
            countIf(kind = 'click' AND in_window) > 0                         AS is_clicked,
            countIf(kind = 'conversion' AND in_window) > 0                    AS is_converted,
            sumIf(toFloat64OrZero(value), kind = 'conversion' AND in_window)  AS request_value
        FROM joined
        GROUP BY arm, request_id
    )
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
ORDER BY arm
