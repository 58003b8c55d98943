-- The most divergent requests of an experiment: both outputs side by side.
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {limit:UInt32}
-- Outputs and errors are cut to 2,000 characters here (a report shows 300 of them): one
-- pathological output must not make every page read megabytes.
SELECT
    event_time, request_id, candidate_model, status, divergence, agree,
    if(length(production_output) > 2000, concat(leftUTF8(production_output, 2000), '…'),
       production_output) AS production_output,
    if(length(candidate_output) > 2000, concat(leftUTF8(candidate_output, 2000), '…'),
       candidate_output) AS candidate_output,
    production_latency_ms, candidate_latency_ms,
    if(length(candidate_error) > 2000, concat(leftUTF8(candidate_error, 2000), '…'),
       candidate_error) AS candidate_error
FROM {db}.comparisons_final
WHERE experiment = {experiment:String}
  AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
  AND (divergence IS NOT NULL OR candidate_error IS NOT NULL)
ORDER BY coalesce(divergence, 2) DESC, request_id
LIMIT {limit:UInt32}
