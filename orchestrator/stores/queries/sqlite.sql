-- Named queries of the SQLite store that differ from PostgreSQL's (see common.sql).
-- A list of values is bound as a JSON array and read with json_each.

-- fragment: history_json
-- A job's history rows as a JSON array, oldest first (inside apply_transition's RETURNING).
(SELECT json_group_array(json_object('job_id', h.job_id, 'seq', h.seq, 'event', h.event,
                                     'status_from', h.status_from, 'status_to', h.status_to,
                                     'reason', h.reason, 'at_ns', h.at_ns, 'duration_ms', h.duration_ms,
                                     'attempt', h.attempt, 'worker_id', h.worker_id))
 FROM (SELECT * FROM job_history WHERE job_id = jobs.id ORDER BY seq) h)

-- name: migration_lock
-- Migrations run in a BEGIN IMMEDIATE transaction, which already holds the write lock.
SELECT 1 AS locked;

-- name: claim
-- The oldest Queued jobs (up to :limit), moved to Running with a lease in one statement
-- (one write transaction: SQLite serialises writers); the database writes the history.
UPDATE jobs SET
    status = 'running',
    status_ns = :now_ns,
    started_ns = :now_ns,
    reason = 'claimed',
    worker_id = :worker_id,
    lease_owner = :worker_id,
    lease_expires_ns = :expires_ns
WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' ORDER BY queued_ns, id LIMIT :limit)
  AND status = 'queued'
RETURNING *;

-- name: renew_leases
UPDATE jobs SET lease_expires_ns = :expires_ns
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running' AND lease_owner = :worker_id
RETURNING id;

-- name: leases_held
SELECT id FROM jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running' AND lease_owner = :worker_id
  AND lease_expires_ns > :now_ns;

-- name: cancel_requests
SELECT id, cancel_requested FROM jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND cancel_requested IS NOT NULL;

-- name: history_many
SELECT * FROM job_history WHERE job_id IN (SELECT value FROM json_each(:ids)) ORDER BY job_id, seq;

-- fragment: skip_locked
-- (SQLite locks the whole database, not rows: nothing to skip.)


-- fragment: by_finished
-- Finished jobs by their finish time. Without statistics (the store never runs ANALYZE)
-- SQLite would read every finished job through jobs_status and sort them: 100 ms for
-- 300,000 jobs, against 1 ms this way, inside the write lock.
INDEXED BY jobs_finished

-- fragment: emitters_first
-- The few emitters, then each one's jobs above its watermark through jobs_trace_emitted
-- (a CROSS JOIN keeps that order: without statistics SQLite walked every emitted job).
CROSS JOIN

-- name: prune_deliveries
-- The deliveries of the jobs prune_jobs deletes next, in the same transaction (the same
-- rows: nothing else writes meanwhile).
DELETE FROM webhook_deliveries
WHERE job_id IN (SELECT id FROM jobs {{by_finished}}
                 WHERE status IN ('completed', 'failed', 'cancelled') AND finished_ns < :before_ns
                 ORDER BY finished_ns, id
                 LIMIT :limit);

-- name: prune_jobs
-- Up to :limit terminal jobs finished before a time, oldest first (history rows go with
-- their job: ON DELETE CASCADE).
DELETE FROM jobs
WHERE id IN (SELECT id FROM jobs {{by_finished}}
             WHERE status IN ('completed', 'failed', 'cancelled') AND finished_ns < :before_ns
             ORDER BY finished_ns, id
             LIMIT :limit)
RETURNING id;

-- name: delete_deliveries
DELETE FROM webhook_deliveries
WHERE job_id IN (SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))
                                    AND status IN ('completed', 'failed', 'cancelled'));

-- name: delete_jobs
-- History rows go with their job (ON DELETE CASCADE).
DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('completed', 'failed', 'cancelled')
RETURNING id;

-- name: webhook_claim
-- Due, pending, unleased deliveries that are the oldest pending delivery of their
-- (subscription, job): deliveries for one job go out in order. Found through the index of
-- due pending deliveries: without statistics SQLite would walk the whole outbox in seq
-- order, delivered rows included, inside the write lock (30 ms at 300,000 of them).
UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_ns = :expires_ns
WHERE seq IN (
    SELECT d.seq FROM webhook_deliveries d INDEXED BY webhook_deliveries_due
    WHERE d.status = 'pending' AND d.next_attempt_ns <= :now_ns
      AND (d.lease_expires_ns IS NULL OR d.lease_expires_ns < :now_ns)
      AND d.subscription_id NOT IN (SELECT value FROM json_each(:busy))
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries e
          WHERE e.subscription_id = d.subscription_id AND e.job_id = d.job_id
            AND e.status = 'pending' AND e.seq < d.seq
      )
    ORDER BY d.seq
    LIMIT :limit
)
RETURNING *;

-- name: trace_mark_lost
-- A span of these jobs' traces was lost (its export failed or was dropped): rebuild them.
UPDATE jobs SET trace_lost_ns = COALESCE(trace_lost_ns, :now_ns) WHERE id IN (SELECT value FROM json_each(:ids));

-- name: trace_mark_done
-- These jobs' rebuilt traces were confirmed exported.
UPDATE jobs SET trace_done_ns = :now_ns, trace_claim = NULL, trace_claim_ns = NULL WHERE id IN (SELECT value FROM json_each(:ids));

-- name: apply_transitions
-- Several transitions of distinct jobs in one statement (see postgres.sql), :transitions
-- a JSON array of apply_transition's parameters; each row is apply_transition for its own
-- job. SQLite's RETURNING cannot name the FROM table, so each row returns its history and
-- the caller keeps the ones it asked for.
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
    results = COALESCE(t.results, jobs.results),
    lease_owner = t.lease_owner,
    lease_expires_ns = t.lease_expires_ns,
    cancel_requested = CASE WHEN t.status_to = 'running' THEN jobs.cancel_requested ELSE NULL END,
    trace_emitter = COALESCE(t.trace_emitter, jobs.trace_emitter),
    trace_seq = COALESCE(t.trace_seq, jobs.trace_seq),
    trace_lost_ns = CASE WHEN t.status_to IN ('completed', 'failed', 'cancelled') AND jobs.trace_sampled = TRUE
                          AND t.trace_emitter IS NULL
                         THEN COALESCE(jobs.trace_lost_ns, t.at_ns) ELSE jobs.trace_lost_ns END
FROM (
    SELECT json_extract(value, '$.job_id') AS job_id, json_extract(value, '$.status_from') AS status_from,
           json_extract(value, '$.status_to') AS status_to, json_extract(value, '$.reason') AS reason,
           json_extract(value, '$.at_ns') AS at_ns, json_extract(value, '$.attempt') AS attempt,
           json_extract(value, '$.new_attempt') AS new_attempt, json_extract(value, '$.worker_id') AS worker_id,
           json_extract(value, '$.error_category') AS error_category,
           json_extract(value, '$.error_phase') AS error_phase, json_extract(value, '$.results') AS results,
           json_extract(value, '$.lease_owner') AS lease_owner,
           json_extract(value, '$.lease_expires_ns') AS lease_expires_ns,
           json_extract(value, '$.trace_emitter') AS trace_emitter, json_extract(value, '$.trace_seq') AS trace_seq
    FROM json_each(:transitions)
) AS t
WHERE jobs.id = t.job_id AND jobs.status = t.status_from AND jobs.attempt = t.attempt
  AND (jobs.cancel_requested IS NULL OR jobs.status <> 'running' OR t.status_to = 'cancelled')
RETURNING *, {{history_json}} AS history;

-- name: insert_jobs
-- Several new jobs in one statement (see postgres.sql), :jobs a JSON array of insert_job's
-- parameters; each row is insert_job's, with the same triggers.
INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                  queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                  trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns, worker_id)
SELECT json_extract(value, '$.id'), json_extract(value, '$.project_id'), json_extract(value, '$.source'),
       json_extract(value, '$.modules'), json_extract(value, '$.options'), json_extract(value, '$.status'),
       json_extract(value, '$.attempt'), json_extract(value, '$.created_ns'), json_extract(value, '$.status_ns'),
       json_extract(value, '$.queued_ns'), json_extract(value, '$.started_ns'),
       json_extract(value, '$.finished_ns'), json_extract(value, '$.reason'),
       json_extract(value, '$.error_category'), json_extract(value, '$.error_phase'),
       json_extract(value, '$.results'), json_extract(value, '$.trace_id'), json_extract(value, '$.root_span_id'),
       json_extract(value, '$.trace_sampled'), json_extract(value, '$.trace_link'),
       json_extract(value, '$.lease_owner'), json_extract(value, '$.lease_expires_ns'),
       json_extract(value, '$.worker_id')
FROM json_each(:jobs)
ORDER BY json_extract(value, '$.id')
RETURNING *;
