-- What every reader uses: exactly one row per (experiment, request, candidate).
CREATE VIEW IF NOT EXISTS {db}.comparisons_final AS
SELECT *, production_failed, candidate_failed
FROM {db}.comparisons FINAL;
