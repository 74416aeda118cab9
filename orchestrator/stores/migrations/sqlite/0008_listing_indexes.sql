-- Listings an index can serve. Jobs by error category (`orchestrator jobs
-- --error-category`): without it, the few jobs of a rare category were found by walking
-- every job. Only jobs with a category are indexed.
CREATE INDEX jobs_error_category ON jobs (error_category, id) WHERE error_category IS NOT NULL;

-- A subscription's deliveries in outbox order (GET /v1/webhooks/{id}/deliveries,
-- `orchestrator webhooks deliveries --subscription`): the latest ones are read from the
-- end of this index instead of sorting all of the subscription's deliveries.
CREATE INDEX webhook_deliveries_subscription ON webhook_deliveries (subscription_id, seq);
