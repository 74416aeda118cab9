-- Named queries of the PostgreSQL store. Each block starts with "-- name: <name>".
-- Placeholders are psycopg's named ones; blocks with {braces} are composed with
-- psycopg.sql (identifiers and fixed clauses only, never values).

-- name: migration_lock
-- Serialises the migrations of workers that start at once (released at commit).
SELECT pg_advisory_xact_lock(8030590385584829554);

-- name: schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s;

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: set_search_path
SET search_path TO {schema};

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ns BIGINT NOT NULL
);

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_ns) VALUES (%(version)s, %(name)s, %(applied_ns)s);

-- name: ping
SELECT 1;

-- name: listen
LISTEN orchestrator_jobs;

-- name: insert_job
INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                  queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                  trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns,
                  cancel_requested)
VALUES (%(id)s, %(project_id)s, %(source)s, %(modules)s::jsonb, %(options)s::jsonb, %(status)s, %(attempt)s,
        %(created_ns)s, %(status_ns)s, %(queued_ns)s, %(started_ns)s, %(finished_ns)s, %(reason)s,
        %(error_category)s, %(error_phase)s, %(results)s::jsonb, %(trace_id)s, %(root_span_id)s,
        %(trace_sampled)s, %(trace_link)s, %(lease_owner)s, %(lease_expires_ns)s, %(cancel_requested)s);

-- name: insert_history
INSERT INTO job_history (job_id, seq, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
VALUES (%(job_id)s,
        (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_history WHERE job_id = %(job_id)s),
        %(status_from)s, %(status_to)s, %(reason)s, %(at_ns)s, %(duration_ms)s, %(attempt)s, %(worker_id)s);

-- name: get_job
SELECT * FROM jobs WHERE id = %(id)s;

-- name: create_job
-- A new job created and enqueued in one statement, one round trip: the job row as it
-- stands after Pending -> Queued, its two history rows (none -> pending "created",
-- then pending -> queued), the webhook outbox rows of the enqueue and, when wake-ups
-- are on, the notification (sent at commit). Nothing is written if any part fails.
WITH created AS (
    INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                      queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                      trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns,
                      cancel_requested)
    VALUES (%(id)s, %(project_id)s, %(source)s, %(modules)s::jsonb, %(options)s::jsonb, %(status)s, %(attempt)s,
            %(created_ns)s, %(status_ns)s, %(queued_ns)s, %(started_ns)s, %(finished_ns)s, %(reason)s,
            %(error_category)s, %(error_phase)s, %(results)s::jsonb, %(trace_id)s, %(root_span_id)s,
            %(trace_sampled)s, %(trace_link)s, %(lease_owner)s, %(lease_expires_ns)s, %(cancel_requested)s)
    RETURNING *
), hist AS (
    INSERT INTO job_history (job_id, seq, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT c.id, 1, NULL, %(created_status)s, 'created', c.created_ns, 0.0, %(created_attempt)s, NULL FROM created c
    UNION ALL
    SELECT c.id, 2, %(created_status)s, c.status, c.reason, c.status_ns, %(duration_ms)s, c.attempt, %(worker_id)s
    FROM created c
), outbox AS (
    INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, status,
                                    next_attempt_ns, created_ns, trace_id, root_span_id, trace_sampled)
    SELECT replace(gen_random_uuid()::text, '-', ''), s.id, c.id, c.project_id, %(event)s::text,
           jsonb_build_object('event', %(event)s::text, 'job_id', c.id, 'project_id', c.project_id,
                              'status_from', %(created_status)s::text, 'status_to', c.status, 'reason', c.reason,
                              'timestamp', %(timestamp)s::text, 'attempt', c.attempt, 'trace_id', c.trace_id),
           'pending', c.status_ns, c.status_ns, c.trace_id, c.root_span_id, c.trace_sampled
    FROM created c JOIN webhook_subscriptions s ON s.project_id = c.project_id
    WHERE s.events ? %(event)s::text
    ORDER BY s.id
)
SELECT c.*,
       CASE WHEN %(notify)s AND c.status = 'queued' THEN pg_notify('orchestrator_jobs', '') END AS woke
FROM created c;

-- name: apply_transition
-- One statement, one round trip: compare-and-set on (status, attempt) (the attempt
-- fences off a worker whose lease was taken over), the history row, and, when the
-- job enters the queue and wake-ups are on, a notification sent at commit; on request,
-- the job's history as it stands after the transition.
-- Timestamps of each status are set when it is entered. The next seq is safe to
-- compute here: the UPDATE holds the job's row lock and every history writer
-- changes the job's status under that lock.
WITH moved AS (
    UPDATE jobs SET
        status = %(status_to)s,
        status_ns = %(at_ns)s,
        attempt = %(new_attempt)s,
        reason = %(reason)s,
        queued_ns = CASE WHEN %(status_to)s = 'queued' THEN %(at_ns)s ELSE queued_ns END,
        started_ns = CASE WHEN %(status_to)s = 'running' THEN %(at_ns)s ELSE started_ns END,
        finished_ns = CASE WHEN %(status_to)s IN ('completed', 'failed', 'cancelled') THEN %(at_ns)s
                           ELSE finished_ns END,
        error_category = COALESCE(%(error_category)s, error_category),
        error_phase = COALESCE(%(error_phase)s, error_phase),
        results = COALESCE(%(results)s::jsonb, results),
        lease_owner = %(lease_owner)s,
        lease_expires_ns = %(lease_expires_ns)s,
        cancel_requested = CASE WHEN %(status_to)s = 'running' THEN cancel_requested ELSE NULL END
    WHERE id = %(job_id)s AND status = %(status_from)s AND attempt = %(attempt)s
    RETURNING *
), hist AS (
    INSERT INTO job_history (job_id, seq, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT m.id,
           (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = m.id),
           %(status_from)s, m.status, m.reason, m.status_ns, %(duration_ms)s, m.attempt, %(worker_id)s
    FROM moved m
    RETURNING *
), outbox AS (
    -- Webhook deliveries for the subscriptions that want this event: the outbox row
    -- commits with the transition or not at all.
    INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, status,
                                    next_attempt_ns, created_ns, trace_id, root_span_id, trace_sampled)
    SELECT replace(gen_random_uuid()::text, '-', ''), s.id, m.id, m.project_id, %(event)s::text,
           jsonb_build_object('event', %(event)s::text, 'job_id', m.id, 'project_id', m.project_id,
                              'status_from', %(status_from)s::text, 'status_to', m.status, 'reason', m.reason,
                              'timestamp', %(timestamp)s::text, 'attempt', m.attempt, 'trace_id', m.trace_id),
           'pending', m.status_ns, m.status_ns, m.trace_id, m.root_span_id, m.trace_sampled
    FROM moved m JOIN webhook_subscriptions s ON s.project_id = m.project_id
    WHERE s.events ? %(event)s::text
    ORDER BY s.id
)
SELECT m.*,
       CASE WHEN %(notify)s AND m.status = 'queued' THEN pg_notify('orchestrator_jobs', '') END AS woke,
       -- With with_history, the job's whole history, this transition's row included (the
       -- statement's own insert is not visible to its reads: it comes from hist), so that
       -- a terminal transition needs no second round trip to emit the root span.
       CASE WHEN %(with_history)s THEN (
           SELECT json_agg(h ORDER BY h.seq)
           FROM (SELECT * FROM job_history WHERE job_id = m.id UNION ALL SELECT * FROM hist) h
       ) END AS history
FROM moved m;

-- name: claim
-- The oldest Queued job, skipping rows other workers are claiming, moved to Running
-- with a lease and its history row, in one statement.
WITH candidate AS (
    SELECT id, status_ns AS previous_ns
    FROM jobs
    WHERE status = 'queued'
    ORDER BY queued_ns, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE jobs j SET
        status = 'running',
        status_ns = %(now_ns)s,
        started_ns = %(now_ns)s,
        reason = 'claimed',
        lease_owner = %(worker_id)s,
        lease_expires_ns = %(expires_ns)s
    FROM candidate c
    WHERE j.id = c.id AND j.status = 'queued'
    RETURNING j.*, c.previous_ns
), hist AS (
    INSERT INTO job_history (job_id, seq, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT m.id,
           (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = m.id),
           'queued', 'running', 'claimed', m.status_ns,
           GREATEST(0, (m.status_ns - m.previous_ns) / 1e6)::double precision, m.attempt, %(worker_id)s
    FROM moved m
), outbox AS (
    INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, status,
                                    next_attempt_ns, created_ns, trace_id, root_span_id, trace_sampled)
    SELECT replace(gen_random_uuid()::text, '-', ''), s.id, m.id, m.project_id, 'job.lifecycle.start',
           jsonb_build_object('event', 'job.lifecycle.start', 'job_id', m.id, 'project_id', m.project_id,
                              'status_from', 'queued', 'status_to', 'running', 'reason', 'claimed',
                              'timestamp', %(timestamp)s::text, 'attempt', m.attempt, 'trace_id', m.trace_id),
           'pending', m.status_ns, m.status_ns, m.trace_id, m.root_span_id, m.trace_sampled
    FROM moved m JOIN webhook_subscriptions s ON s.project_id = m.project_id
    WHERE s.events ? 'job.lifecycle.start'
    ORDER BY s.id
)
SELECT * FROM moved;

-- name: renew_leases
UPDATE jobs SET lease_expires_ns = %(expires_ns)s
WHERE id = ANY(%(ids)s) AND status = 'running' AND lease_owner = %(worker_id)s
RETURNING id;

-- name: request_cancel
UPDATE jobs SET cancel_requested = %(reason)s WHERE id = %(id)s AND status = 'running' RETURNING *;

-- name: cancel_requests
SELECT id, cancel_requested FROM jobs WHERE id = ANY(%(ids)s) AND cancel_requested IS NOT NULL;

-- name: list_jobs
-- The WHERE placeholder is composed from fixed clauses; every value is bound.
SELECT * FROM jobs {where} ORDER BY id DESC LIMIT %(limit)s;

-- name: expired
SELECT * FROM jobs WHERE status = 'running' AND lease_expires_ns < %(now_ns)s
ORDER BY lease_expires_ns LIMIT %(limit)s;

-- name: history
SELECT * FROM job_history WHERE job_id = %(job_id)s ORDER BY seq;

-- name: queue_depth
SELECT COUNT(*) AS depth FROM jobs WHERE status = 'queued';

-- name: webhook_insert_subscription
INSERT INTO webhook_subscriptions (id, project_id, url, secret, events, created_ns)
VALUES (%(id)s, %(project_id)s, %(url)s, %(secret)s, %(events)s::jsonb, %(created_ns)s);

-- name: webhook_get_subscription
SELECT * FROM webhook_subscriptions WHERE id = %(id)s;

-- name: webhook_delete_subscription
DELETE FROM webhook_subscriptions WHERE id = %(id)s RETURNING id;

-- name: webhook_claim
-- Due, pending, unleased deliveries that are the oldest pending delivery of their
-- (subscription, job): deliveries for one job go out in order. SKIP LOCKED lets
-- several dispatchers share the outbox.
UPDATE webhook_deliveries SET lease_owner = %(owner)s, lease_expires_ns = %(expires_ns)s
WHERE seq IN (
    SELECT d.seq FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_ns <= %(now_ns)s
      AND (d.lease_expires_ns IS NULL OR d.lease_expires_ns < %(now_ns)s)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries e
          WHERE e.subscription_id = d.subscription_id AND e.job_id = d.job_id
            AND e.status = 'pending' AND e.seq < d.seq
      )
    ORDER BY d.seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: webhook_finish_attempt
UPDATE webhook_deliveries SET
    attempts = %(attempt)s,
    status = %(status)s,
    next_attempt_ns = %(next_attempt_ns)s,
    last_status_code = %(status_code)s,
    last_error = %(error)s,
    finished_ns = CASE WHEN %(status)s = 'pending' THEN NULL ELSE %(at_ns)s::bigint END,
    lease_owner = NULL,
    lease_expires_ns = NULL
WHERE id = %(id)s AND lease_owner = %(owner)s
RETURNING id;

-- name: webhook_insert_attempt
INSERT INTO webhook_attempts (delivery_id, attempt, at_ns, duration_ms, outcome, status_code, error)
VALUES (%(id)s, %(attempt)s, %(at_ns)s, %(duration_ms)s, %(outcome)s, %(status_code)s, %(error)s);

-- name: webhook_attempts
SELECT * FROM webhook_attempts WHERE delivery_id = %(id)s ORDER BY attempt;
