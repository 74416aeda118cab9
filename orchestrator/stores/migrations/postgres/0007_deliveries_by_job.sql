-- A job's deliveries by its id: deleting a job (prune, DELETE /v1/jobs/{id}) and listing
-- one job's deliveries read them so, and without this index they scanned the whole
-- outbox (inside the write transaction, on SQLite).
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
