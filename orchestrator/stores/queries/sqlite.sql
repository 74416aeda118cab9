-- Named queries of the SQLite store. Each block starts with "-- name: <name>".

-- name: insert_job
INSERT INTO jobs (id, project_id, source, modules, options, status, attempt, created_ns, status_ns,
                  queued_ns, started_ns, finished_ns, reason, error_category, error_phase, results,
                  trace_id, root_span_id, trace_sampled, trace_link, lease_owner, lease_expires_ns,
                  cancel_requested)
VALUES (:id, :project_id, :source, :modules, :options, :status, :attempt, :created_ns, :status_ns,
        :queued_ns, :started_ns, :finished_ns, :reason, :error_category, :error_phase, :results,
        :trace_id, :root_span_id, :trace_sampled, :trace_link, :lease_owner, :lease_expires_ns,
        :cancel_requested);

-- name: insert_history
INSERT INTO job_history (job_id, seq, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
VALUES (:job_id,
        (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_history WHERE job_id = :job_id),
        :status_from, :status_to, :reason, :at_ns, :duration_ms, :attempt, :worker_id);

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: apply_transition
-- Compare-and-set on (status, attempt): the attempt fences off a worker whose lease
-- was taken over. Timestamps of each status are set when it is entered.
UPDATE jobs SET
    status = :status_to,
    status_ns = :at_ns,
    attempt = :new_attempt,
    reason = :reason,
    queued_ns = CASE WHEN :status_to = 'queued' THEN :at_ns ELSE queued_ns END,
    started_ns = CASE WHEN :status_to = 'running' THEN :at_ns ELSE started_ns END,
    finished_ns = CASE WHEN :status_to IN ('completed', 'failed', 'cancelled') THEN :at_ns ELSE finished_ns END,
    error_category = COALESCE(:error_category, error_category),
    error_phase = COALESCE(:error_phase, error_phase),
    results = COALESCE(:results, results),
    lease_owner = :lease_owner,
    lease_expires_ns = :lease_expires_ns,
    cancel_requested = CASE WHEN :status_to = 'running' THEN cancel_requested ELSE NULL END
WHERE id = :job_id AND status = :status_from AND attempt = :attempt
RETURNING *;

-- name: next_claimable
SELECT id, attempt, status_ns FROM jobs WHERE status = 'queued' ORDER BY queued_ns, id LIMIT 1;

-- name: renew_lease
UPDATE jobs SET lease_expires_ns = :expires_ns
WHERE id = :id AND status = 'running' AND lease_owner = :worker_id
RETURNING id;

-- name: request_cancel
UPDATE jobs SET cancel_requested = :reason WHERE id = :id AND status = 'running' RETURNING *;

-- name: expired
SELECT * FROM jobs WHERE status = 'running' AND lease_expires_ns < :now_ns
ORDER BY lease_expires_ns LIMIT :limit;

-- name: history
SELECT * FROM job_history WHERE job_id = :job_id ORDER BY seq;

-- name: queue_depth
SELECT COUNT(*) AS depth FROM jobs WHERE status = 'queued';

-- name: insert_outbox
-- Webhook deliveries for the subscriptions that want this event, in the transaction
-- of the transition they report.
INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, status,
                                next_attempt_ns, created_ns, trace_id, root_span_id, trace_sampled)
SELECT lower(hex(randomblob(16))), s.id, j.id, j.project_id, :event,
       json_object('event', :event, 'job_id', j.id, 'project_id', j.project_id,
                   'status_from', :status_from, 'status_to', j.status, 'reason', j.reason,
                   'timestamp', :timestamp, 'attempt', j.attempt, 'trace_id', j.trace_id),
       'pending', j.status_ns, j.status_ns, j.trace_id, j.root_span_id, j.trace_sampled
FROM jobs j JOIN webhook_subscriptions s ON s.project_id = j.project_id
WHERE j.id = :job_id AND EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = :event)
ORDER BY s.id;

-- name: webhook_insert_subscription
INSERT INTO webhook_subscriptions (id, project_id, url, secret, events, created_ns)
VALUES (:id, :project_id, :url, :secret, :events, :created_ns);

-- name: webhook_get_subscription
SELECT * FROM webhook_subscriptions WHERE id = :id;

-- name: webhook_delete_subscription
DELETE FROM webhook_subscriptions WHERE id = :id RETURNING id;

-- name: webhook_claim
-- Due, pending, unleased deliveries that are the oldest pending delivery of their
-- (subscription, job): deliveries for one job go out in order.
UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_ns = :expires_ns
WHERE seq IN (
    SELECT d.seq FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_ns <= :now_ns
      AND (d.lease_expires_ns IS NULL OR d.lease_expires_ns < :now_ns)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries e
          WHERE e.subscription_id = d.subscription_id AND e.job_id = d.job_id
            AND e.status = 'pending' AND e.seq < d.seq
      )
    ORDER BY d.seq
    LIMIT :limit
)
RETURNING *;

-- name: webhook_finish_attempt
UPDATE webhook_deliveries SET
    attempts = :attempt,
    status = :status,
    next_attempt_ns = :next_attempt_ns,
    last_status_code = :status_code,
    last_error = :error,
    finished_ns = CASE WHEN :status = 'pending' THEN NULL ELSE :at_ns END,
    lease_owner = NULL,
    lease_expires_ns = NULL
WHERE id = :id AND lease_owner = :owner
RETURNING id;

-- name: webhook_insert_attempt
INSERT INTO webhook_attempts (delivery_id, attempt, at_ns, duration_ms, outcome, status_code, error)
VALUES (:id, :attempt, :at_ns, :duration_ms, :outcome, :status_code, :error);

-- name: webhook_attempts
SELECT * FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempt;
