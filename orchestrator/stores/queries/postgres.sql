-- Named queries of the PostgreSQL store that differ from SQLite's (see common.sql), and
-- the connector's own (names starting with "_"). A list of values is bound as an array.

-- name: _schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = :schema;

-- name: _create_schema
-- {schema} is composed with psycopg.sql.Identifier.
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: _set_search_path
SET search_path TO {schema};

-- name: _listen
-- {channel}: "orchestrator_jobs:<schema>", composed with psycopg.sql.Identifier.
LISTEN {channel};

-- name: _notify_off
SET orchestrator.notify = 'off';

-- name: _current_schema
SELECT current_schema() AS schema;

-- fragment: history_json
-- A job's history rows as a JSON array, oldest first (inside apply_transition's RETURNING).
(SELECT json_agg(h ORDER BY h.seq) FROM job_history h WHERE h.job_id = jobs.id)

-- name: migration_lock
-- Serialises the migrations of workers that start at once (released at commit). Waits
-- for it, and for the locks its migrations take, are not bounded by the connection's
-- lock timeout (set_config(..., true): this transaction only; evaluated first, as the
-- CTE a volatile function makes it).
WITH unbounded AS (SELECT set_config('lock_timeout', '0', true))
SELECT pg_advisory_xact_lock(8030590385584829554) FROM unbounded;

-- name: _lock_timeout
-- Every pooled connection: a statement waits this long for a lock another session holds.
SELECT set_config('lock_timeout', :lock_timeout, false);

-- name: claim
-- The oldest Queued jobs (up to :limit), skipping rows other workers are claiming, moved
-- to Running with a lease in one statement; the database writes the history.
WITH candidate AS (
    SELECT id FROM jobs
    WHERE status = 'queued'
    ORDER BY queued_ns, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET
    status = 'running',
    status_ns = :now_ns,
    started_ns = :now_ns,
    reason = 'claimed',
    worker_id = :worker_id,
    lease_owner = :worker_id,
    lease_expires_ns = :expires_ns
FROM candidate c
WHERE j.id = c.id AND j.status = 'queued'
RETURNING j.*;

-- name: renew_leases
-- Rows another session holds locked are skipped, not waited for (leases_held tells them
-- from the ones this worker lost).
WITH mine AS (
    SELECT id FROM jobs
    WHERE id = ANY(:ids) AND status = 'running' AND lease_owner = :worker_id
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE jobs SET lease_expires_ns = :expires_ns
FROM mine
WHERE jobs.id = mine.id
RETURNING jobs.id;

-- name: leases_held
-- Of these jobs, the ones still leased to this worker, unexpired (a read: it waits for no lock).
SELECT id FROM jobs
WHERE id = ANY(:ids) AND status = 'running' AND lease_owner = :worker_id AND lease_expires_ns > :now_ns;

-- name: cancel_requests
SELECT id, cancel_requested FROM jobs WHERE id = ANY(:ids) AND cancel_requested IS NOT NULL;

-- name: history_many
SELECT * FROM job_history WHERE job_id = ANY(:ids) ORDER BY job_id, seq;

-- fragment: skip_locked
-- A row another session holds (a forgotten psql session's FOR UPDATE) is skipped: the
-- others are still worked on.
FOR UPDATE SKIP LOCKED

-- fragment: by_finished
-- (PostgreSQL's planner picks jobs_finished by itself: it has statistics.)


-- fragment: emitters_first
JOIN

-- name: prune_deliveries
-- Nothing here: prune_jobs deletes the round's deliveries with their jobs, in its one
-- statement (two statements could choose different rows: the row locks they skip may be
-- released between them).
SELECT 1 WHERE FALSE;

-- name: prune_jobs
-- Up to :limit terminal jobs finished before a time, oldest first, with their deliveries
-- (history rows go with their job: ON DELETE CASCADE). One statement: a row another
-- session holds is skipped with its deliveries, and the next ones fill the round.
WITH doomed AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status IN ('completed', 'failed', 'cancelled') AND finished_ns < :before_ns
    ORDER BY finished_ns, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), deliveries AS (
    DELETE FROM webhook_deliveries WHERE job_id IN (SELECT id FROM doomed)
)
DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)
RETURNING id;

-- name: delete_deliveries
DELETE FROM webhook_deliveries
WHERE job_id IN (SELECT id FROM jobs WHERE id = ANY(:ids) AND status IN ('completed', 'failed', 'cancelled'));

-- name: delete_jobs
-- History rows go with their job (ON DELETE CASCADE).
DELETE FROM jobs WHERE id = ANY(:ids) AND status IN ('completed', 'failed', 'cancelled') RETURNING id;

-- name: webhook_claim
-- Due, pending, unleased deliveries that are the oldest pending delivery of their
-- (subscription, job): deliveries for one job go out in order. SKIP LOCKED lets
-- several dispatchers share the outbox.
UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_ns = :expires_ns
WHERE seq IN (
    SELECT d.seq FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_ns <= :now_ns
      AND (d.lease_expires_ns IS NULL OR d.lease_expires_ns < :now_ns)
      AND d.subscription_id <> ALL(:busy)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries e
          WHERE e.subscription_id = d.subscription_id AND e.job_id = d.job_id
            AND e.status = 'pending' AND e.seq < d.seq
      )
    ORDER BY d.seq
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: trace_mark_lost
-- A span of these jobs' traces was lost (its export failed or was dropped): rebuild them.
UPDATE jobs SET trace_lost_ns = COALESCE(trace_lost_ns, :now_ns) WHERE id = ANY(:ids);

-- name: trace_mark_done
-- These jobs' rebuilt traces were confirmed exported.
UPDATE jobs SET trace_done_ns = :now_ns, trace_claim = NULL, trace_claim_ns = NULL WHERE id = ANY(:ids);

-- name: apply_transitions
-- Several transitions of distinct jobs in one statement (a group commit: see
-- stores/grouping.py), :transitions a JSON array of apply_transition's parameters. Each
-- row is apply_transition for its own job: the same compare-and-set on (status, attempt),
-- the same columns, the same triggers (history, outbox, emitter), its history with it
-- when asked. The rows are locked in job id order first, as one writer of several
-- jobs must. A transition the database refuses fails the whole statement.
WITH t AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:transitions) AS r(
        job_id TEXT, status_from TEXT, status_to TEXT, reason TEXT, at_ns BIGINT, attempt INTEGER,
        new_attempt INTEGER, worker_id TEXT, error_category TEXT, error_phase TEXT, results TEXT,
        lease_owner TEXT, lease_expires_ns BIGINT, trace_emitter TEXT, trace_seq BIGINT, with_history BOOLEAN)
), locked AS MATERIALIZED (
    SELECT j.id FROM jobs j WHERE j.id IN (SELECT job_id FROM t) ORDER BY j.id FOR UPDATE OF j
)
UPDATE jobs SET
    status = t.status_to,
    status_ns = t.at_ns,
    attempt = t.new_attempt,
    reason = t.reason,
    worker_id = t.worker_id,
    queued_ns = CASE WHEN t.status_to = 'queued' THEN t.at_ns ELSE jobs.queued_ns END,
    started_ns = CASE WHEN t.status_to = 'running' THEN t.at_ns ELSE jobs.started_ns END,
    finished_ns = CASE WHEN t.status_to IN ('completed', 'failed', 'cancelled') THEN t.at_ns ELSE jobs.finished_ns END,
    error_category = COALESCE(t.error_category, jobs.error_category),
    error_phase = COALESCE(t.error_phase, jobs.error_phase),
    results = COALESCE(CAST(t.results AS JSONB), jobs.results),
    lease_owner = t.lease_owner,
    lease_expires_ns = t.lease_expires_ns,
    cancel_requested = CASE WHEN t.status_to = 'running' THEN jobs.cancel_requested ELSE NULL END,
    trace_emitter = COALESCE(t.trace_emitter, jobs.trace_emitter),
    trace_seq = COALESCE(t.trace_seq, jobs.trace_seq),
    trace_lost_ns = CASE WHEN t.status_to IN ('completed', 'failed', 'cancelled') AND jobs.trace_sampled = TRUE
                          AND t.trace_emitter IS NULL
                         THEN COALESCE(jobs.trace_lost_ns, t.at_ns) ELSE jobs.trace_lost_ns END
FROM t
WHERE jobs.id = t.job_id AND jobs.id IN (SELECT id FROM locked)
  AND jobs.status = t.status_from AND jobs.attempt = t.attempt
  AND (jobs.cancel_requested IS NULL OR jobs.status <> 'running' OR t.status_to = 'cancelled')
RETURNING jobs.*, CASE WHEN t.with_history THEN {{history_json}} END AS history;

-- name: insert_jobs
-- Several new jobs in one statement (a group commit, as apply_transitions): :jobs a JSON
-- array of insert_job's parameters. Each row is insert_job's, with the same triggers (its
-- history, its outbox rows, the workers' wake-up). A job the database refuses fails the
-- whole statement.
INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                  queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                  trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns, worker_id)
SELECT r.id, r.project_id, r.source, CAST(r.modules AS JSONB), CAST(r.options AS JSONB), r.status, r.attempt,
       r.created_ns, r.status_ns, r.queued_ns, r.started_ns, r.finished_ns, r.reason, r.error_category,
       r.error_phase, CAST(r.results AS JSONB), r.trace_id, r.root_span_id, r.trace_sampled, r.trace_link,
       r.lease_owner, r.lease_expires_ns, r.worker_id
FROM jsonb_to_recordset(:jobs) AS r(
    id TEXT, project_id TEXT, source TEXT, modules TEXT, options TEXT, status TEXT, attempt INTEGER,
    created_ns BIGINT, status_ns BIGINT, queued_ns BIGINT, started_ns BIGINT, finished_ns BIGINT, reason TEXT,
    error_category TEXT, error_phase TEXT, results TEXT, trace_id TEXT, root_span_id TEXT, trace_sampled BOOLEAN,
    trace_link TEXT, lease_owner TEXT, lease_expires_ns BIGINT, worker_id TEXT)
ORDER BY r.id
RETURNING *;
