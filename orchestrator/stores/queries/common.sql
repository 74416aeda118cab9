-- Named queries both stores run as written. Each block starts with "-- name: <name>".
-- Placeholders are :name (the PostgreSQL connector turns them into psycopg's %(name)s).
-- Values are always bound, never composed. JSON values are bound as canonical JSON text
-- (TEXT on SQLite, jsonb on PostgreSQL). An optional filter is written
-- "CAST(:x AS TEXT) IS NULL OR column = :x", which both dialects plan from the value.
-- Dialect files (sqlite.sql, postgres.sql) hold the queries that differ; together each
-- dialect has the same names (tests/test_store_structure.py checks it). A common query may
-- take a dialect's fragment ("-- fragment: x" in the dialect file) where it says {{x}}.

-- name: ping
SELECT 1 AS ok;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ns BIGINT NOT NULL
);

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_ns) VALUES (:version, :name, :applied_ns);

-- name: insert_job
-- A new job, inserted in the status it starts in (pending, queued, or running for a job
-- its creator runs itself); the database writes the history of that path.
INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                  queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                  trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns, worker_id)
VALUES (:id, :project_id, :source, :modules, :options, :status, :attempt, :created_ns, :status_ns,
        :queued_ns, :started_ns, :finished_ns, :reason, :error_category, :error_phase, :results,
        :trace_id, :root_span_id, :trace_sampled, :trace_link, :lease_owner, :lease_expires_ns, :worker_id)
RETURNING *;

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: apply_transition
-- Compare-and-set on (status, attempt): the attempt fences off a worker whose lease was
-- taken over. A Running job whose cancellation was asked can only end Cancelled. The
-- timestamp of each status is set when it is entered. The database checks the
-- transition, appends the history row and writes the outbox rows. With :with_history it
-- also returns the job's history as it stood before (the row of this transition is
-- written by a trigger after the statement's reads): one statement, one round trip for
-- the terminal transition of a job whose root span is emitted from it.
UPDATE jobs SET
    status = :status_to,
    status_ns = :at_ns,
    attempt = :new_attempt,
    reason = :reason,
    worker_id = :worker_id,
    queued_ns = CASE WHEN :status_to = 'queued' THEN :at_ns ELSE queued_ns END,
    started_ns = CASE WHEN :status_to = 'running' THEN :at_ns ELSE started_ns END,
    finished_ns = CASE WHEN :status_to IN ('completed', 'failed', 'cancelled') THEN :at_ns ELSE finished_ns END,
    error_category = COALESCE(:error_category, error_category),
    error_phase = COALESCE(:error_phase, error_phase),
    results = COALESCE(:results, results),
    lease_owner = :lease_owner,
    lease_expires_ns = :lease_expires_ns,
    cancel_requested = CASE WHEN :status_to = 'running' THEN cancel_requested ELSE NULL END,
    -- The process emitting a sampled job's root span says so (with its sequence number);
    -- a sampled job that ends with no such emitter is flagged for rebuilding its trace.
    trace_emitter = COALESCE(CAST(:trace_emitter AS TEXT), trace_emitter),
    trace_seq = COALESCE(CAST(:trace_seq AS BIGINT), trace_seq),
    trace_lost_ns = CASE WHEN :status_to IN ('completed', 'failed', 'cancelled') AND trace_sampled = TRUE
                          AND CAST(:trace_emitter AS TEXT) IS NULL
                         THEN COALESCE(trace_lost_ns, :at_ns) ELSE trace_lost_ns END
WHERE id = :job_id AND status = :status_from AND attempt = :attempt
  AND (cancel_requested IS NULL OR status <> 'running' OR :status_to = 'cancelled')
RETURNING *, CASE WHEN :with_history THEN {{history_json}} END AS history;

-- name: request_cancel
-- Flag a Running job (once): its worker ends it Cancelled. Recorded in the history.
UPDATE jobs SET cancel_requested = :reason, cancel_requested_by = :requested_by, cancel_requested_ns = :at_ns
WHERE id = :id AND status = 'running' AND cancel_requested IS NULL
RETURNING *;

-- fragment: job_filters
-- A page of jobs, newest first: the ids below :after (a page's last id; without it, every
-- id: the largest one extended is above it) and from :since_id (the first id a job created
-- at :since_ns can have: an id starts with its job's creation time; '' without --since),
-- matching the filters given. The bounds are written so the index can serve them (an
-- "IS NULL OR" term cannot use an index): a page of recent jobs stops at their first id.
id < COALESCE(CAST(:after AS TEXT), (SELECT MAX(id) FROM jobs) || ' ')
  AND id >= :since_id
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:project_id AS TEXT) IS NULL OR project_id = :project_id)
  AND (CAST(:error_category AS TEXT) IS NULL OR error_category = :error_category)
  AND (CAST(:since_ns AS BIGINT) IS NULL OR created_ns >= :since_ns)
ORDER BY id DESC
LIMIT :limit

-- name: list_jobs
SELECT * FROM jobs WHERE {{job_filters}};

-- name: list_jobs_by_status
-- Through jobs_status (status, id): the failed jobs among a million completed ones are
-- found at once, not by walking them all.
SELECT * FROM jobs WHERE status = :status AND {{job_filters}};

-- name: list_jobs_by_project
-- Through jobs_project (project_id, id).
SELECT * FROM jobs WHERE project_id = :project_id AND {{job_filters}};

-- name: list_jobs_by_error_category
-- Through jobs_error_category (error_category, id), which holds only categorised jobs.
SELECT * FROM jobs WHERE error_category = :error_category AND {{job_filters}};

-- name: find_ids
-- Ids starting with a prefix (hexadecimal digits and dashes only: checked before).
SELECT id FROM jobs WHERE id >= :prefix AND id < :prefix_end ORDER BY id LIMIT :limit;

-- name: expired
SELECT * FROM jobs WHERE status = 'running' AND lease_expires_ns < :now_ns
ORDER BY lease_expires_ns LIMIT :limit;

-- name: history
SELECT * FROM job_history WHERE job_id = :job_id ORDER BY seq;

-- name: queue_depth
SELECT COUNT(*) AS depth FROM jobs WHERE status = 'queued';

-- name: count_prunable
SELECT COUNT(*) AS jobs FROM jobs {{by_finished}}
WHERE status IN ('completed', 'failed', 'cancelled') AND finished_ns < :before_ns;

-- name: trace_watermark
-- An emitter's watermark: every root span it emitted up to confirmed_seq was confirmed
-- exported (or its job flagged lost, in the same transaction). advanced_ns moves only
-- when the watermark does: a dead emitter's stays put.
INSERT INTO trace_emitters (emitter_id, confirmed_seq, advanced_ns, seen_ns)
VALUES (:emitter, :confirmed_seq, :now_ns, :now_ns)
ON CONFLICT (emitter_id) DO UPDATE SET
    advanced_ns = CASE WHEN excluded.confirmed_seq > trace_emitters.confirmed_seq
                       THEN excluded.advanced_ns ELSE trace_emitters.advanced_ns END,
    confirmed_seq = CASE WHEN excluded.confirmed_seq > trace_emitters.confirmed_seq
                         THEN excluded.confirmed_seq ELSE trace_emitters.confirmed_seq END,
    seen_ns = excluded.seen_ns;

-- name: trace_claim
-- Terminal jobs whose trace must be rebuilt, claimed (compare-and-set on the claim) by
-- one reconciler until :expires_ns: flagged lost, or above the watermark of an emitter
-- whose watermark has not moved since :before_ns; finished before :before_ns. Oldest
-- first: the :candidates oldest, of which the first :limit that no other session holds
-- (PostgreSQL skips a locked row instead of waiting for it). The choice is
-- materialised first: a locking subquery inside the UPDATE's WHERE may be run again
-- and claim more than :limit.
WITH due AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE id IN (
        SELECT id FROM (
            SELECT j.id, j.finished_ns FROM trace_emitters e
            {{emitters_first}} jobs j ON j.trace_emitter = e.emitter_id AND j.trace_seq > e.confirmed_seq
            WHERE e.advanced_ns < :before_ns AND j.finished_ns < :before_ns AND j.trace_done_ns IS NULL
              AND (j.trace_claim_ns IS NULL OR j.trace_claim_ns < :now_ns)
            UNION
            SELECT id, finished_ns FROM jobs
            WHERE trace_lost_ns IS NOT NULL AND trace_done_ns IS NULL AND finished_ns < :before_ns
              AND (trace_claim_ns IS NULL OR trace_claim_ns < :now_ns)
            ORDER BY finished_ns, id
            LIMIT :candidates
        ) AS oldest
    )
      AND trace_done_ns IS NULL AND (trace_claim_ns IS NULL OR trace_claim_ns < :now_ns)
    ORDER BY finished_ns, id
    LIMIT :limit
    {{skip_locked}}
)
UPDATE jobs SET trace_claim = :owner, trace_claim_ns = :expires_ns
WHERE id IN (SELECT id FROM due)
  AND trace_done_ns IS NULL AND (trace_claim_ns IS NULL OR trace_claim_ns < :now_ns)
RETURNING *;

-- name: trace_prune_emitters
-- Emitters silent since :before_ns with no root left to rebuild.
DELETE FROM trace_emitters
WHERE seen_ns < :before_ns AND advanced_ns < :before_ns
  AND NOT EXISTS (
      SELECT 1 FROM jobs j
      WHERE j.trace_emitter = trace_emitters.emitter_id AND j.trace_seq > trace_emitters.confirmed_seq
        AND j.trace_done_ns IS NULL
  );

-- name: webhook_insert_subscription
INSERT INTO webhook_subscriptions (id, project_id, url, secret, events, created_ns)
VALUES (:id, :project_id, :url, :secret, :events, :created_ns);

-- name: webhook_get_subscription
SELECT * FROM webhook_subscriptions WHERE id = :id;

-- name: webhook_list_subscriptions
SELECT * FROM webhook_subscriptions
WHERE CAST(:project_id AS TEXT) IS NULL OR project_id = :project_id
ORDER BY created_ns, id;

-- name: webhook_delete_subscription
DELETE FROM webhook_subscriptions WHERE id = :id RETURNING id;

-- name: webhook_finish_attempt
-- The delivery's new state after an attempt, if this dispatcher still holds its lease;
-- the database records the attempt itself in webhook_attempts.
UPDATE webhook_deliveries SET
    attempts = :attempt,
    status = :status,
    next_attempt_ns = :next_attempt_ns,
    last_status_code = :status_code,
    last_error = :error,
    last_outcome = :outcome,
    last_duration_ms = :duration_ms,
    last_attempt_ns = :at_ns,
    finished_ns = CASE WHEN :status = 'pending' THEN NULL ELSE CAST(:at_ns AS BIGINT) END,
    lease_owner = NULL,
    lease_expires_ns = NULL
WHERE id = :id AND lease_owner = :owner
RETURNING id;

-- fragment: deliveries_before
-- A page of deliveries ends below :before (the first seq of the page after it; without
-- it, at the end of the outbox), written so the index can serve the bound.
seq < COALESCE(CAST(:before AS BIGINT), 9223372036854775807)

-- name: webhook_list_deliveries
-- The latest deliveries, in outbox order (read back from the end of the outbox).
SELECT * FROM (
    SELECT * FROM webhook_deliveries WHERE {{deliveries_before}} ORDER BY seq DESC LIMIT :limit
) AS latest
ORDER BY seq;

-- name: webhook_list_deliveries_by_job
-- A job's latest deliveries (of one subscription, if given), through webhook_deliveries_job.
SELECT * FROM (
    SELECT * FROM webhook_deliveries
    WHERE job_id = :job_id AND {{deliveries_before}}
      AND (CAST(:subscription_id AS TEXT) IS NULL OR subscription_id = :subscription_id)
    ORDER BY seq DESC
    LIMIT :limit
) AS latest
ORDER BY seq;

-- name: webhook_list_deliveries_by_subscription
-- A subscription's latest deliveries, from the end of webhook_deliveries_subscription.
SELECT * FROM (
    SELECT * FROM webhook_deliveries
    WHERE subscription_id = :subscription_id AND {{deliveries_before}}
    ORDER BY seq DESC
    LIMIT :limit
) AS latest
ORDER BY seq;

-- name: webhook_attempts
SELECT * FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempt;
