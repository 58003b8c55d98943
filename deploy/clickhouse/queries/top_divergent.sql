-- The most divergent requests of an experiment: both outputs side by side.
-- Parameters: {experiment:String}, {since:DateTime64(3)}, {until:DateTime64(3)},
--   {limit:UInt32}
SELECT
    event_time, request_id, candidate_model, status, divergence, agree,
    production_output, candidate_output, production_latency_ms, candidate_latency_ms,
    candidate_error
FROM {db}.comparisons_final
WHERE experiment = {experiment:String}
  AND event_time >= {since:DateTime64(3)} AND event_time < {until:DateTime64(3)}
  AND (divergence IS NOT NULL OR candidate_error IS NOT NULL)
ORDER BY coalesce(divergence, 2) DESC, request_id
LIMIT {limit:UInt32}
