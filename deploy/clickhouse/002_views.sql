-- What every reader uses: exactly one row per (experiment, request, candidate).
-- OR REPLACE: a view made by an earlier version fixed its columns when it was made (a
-- column added since, like candidate_timing, would be missing from it).
CREATE OR REPLACE VIEW {db}.comparisons_final AS
SELECT *, production_failed, candidate_failed
FROM {db}.comparisons FINAL;
