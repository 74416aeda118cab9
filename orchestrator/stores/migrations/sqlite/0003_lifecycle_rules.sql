-- The lifecycle rules, kept by the database itself (the PostgreSQL store has the same).
--
-- A status change is one UPDATE of the job row. Triggers check it against the table of
-- legal transitions (a bug in the application cannot store an illegal one), append its
-- lifecycle-history row, and write the webhook outbox rows of the subscriptions that
-- want its event: all in the statement of the change. A job is created with one INSERT
-- (pending, queued or running), whose trigger writes the history of the path it took.
-- A cancellation asked of a Running job is recorded in the history too (running -> running).

CREATE TABLE job_transitions (
    status_from TEXT NOT NULL,
    status_to   TEXT NOT NULL,
    event       TEXT NOT NULL,                 -- the lifecycle event the transition emits
    PRIMARY KEY (status_from, status_to)
) STRICT, WITHOUT ROWID;

INSERT INTO job_transitions (status_from, status_to, event) VALUES
    ('pending', 'queued', 'job.lifecycle.enqueue'),
    ('pending', 'failed', 'job.lifecycle.fail'),
    ('pending', 'cancelled', 'job.lifecycle.cancel'),
    ('queued', 'running', 'job.lifecycle.start'),
    ('queued', 'cancelled', 'job.lifecycle.cancel'),
    ('running', 'completed', 'job.lifecycle.complete'),
    ('running', 'failed', 'job.lifecycle.fail'),
    ('running', 'cancelled', 'job.lifecycle.cancel'),
    ('running', 'queued', 'job.lifecycle.recover');

ALTER TABLE jobs ADD COLUMN worker_id TEXT;             -- the worker of the latest transition
ALTER TABLE jobs ADD COLUMN cancel_requested_by TEXT;
ALTER TABLE jobs ADD COLUMN cancel_requested_ns INTEGER;

ALTER TABLE job_history ADD COLUMN event TEXT NOT NULL DEFAULT '';
UPDATE job_history SET event = COALESCE(
    (SELECT t.event FROM job_transitions t
     WHERE t.status_from = job_history.status_from AND t.status_to = job_history.status_to),
    'job.lifecycle.create');

-- An outbox row carries the fields of the history row it reports; the payload is built
-- from them when it is sent. (payload: '{}' from now on, the full payload in rows written
-- before this migration; SQLite cannot drop its NOT NULL without rebuilding the table.)
ALTER TABLE webhook_deliveries ADD COLUMN history_seq INTEGER;
ALTER TABLE webhook_deliveries ADD COLUMN status_from TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN status_to TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN reason TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN at_ns INTEGER;
ALTER TABLE webhook_deliveries ADD COLUMN attempt INTEGER;
ALTER TABLE webhook_deliveries ADD COLUMN last_outcome TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN last_duration_ms REAL;
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt_ns INTEGER;

-- Retention walks terminal jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_ns) WHERE status IN ('completed', 'failed', 'cancelled');

CREATE TRIGGER jobs_created AFTER INSERT ON jobs
BEGIN
    SELECT RAISE(ABORT, 'illegal transition: a job is created pending, queued or running')
    WHERE NEW.status NOT IN ('pending', 'queued', 'running');
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    VALUES (NEW.id, 1, 'job.lifecycle.create', NULL, 'pending', 'created', NEW.created_ns, 0.0, NEW.attempt, NULL);
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT NEW.id, 2, t.event, 'pending', 'queued', CASE WHEN NEW.status = 'queued' THEN NEW.reason ELSE 'enqueued' END,
           NEW.queued_ns, max(0.0, (NEW.queued_ns - NEW.created_ns) / 1e6), NEW.attempt, NULL
    FROM job_transitions t
    WHERE t.status_from = 'pending' AND t.status_to = 'queued' AND NEW.status IN ('queued', 'running');
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT NEW.id, 3, t.event, 'queued', 'running', NEW.reason, NEW.started_ns,
           max(0.0, (NEW.started_ns - NEW.queued_ns) / 1e6), NEW.attempt, NEW.worker_id
    FROM job_transitions t
    WHERE t.status_from = 'queued' AND t.status_to = 'running' AND NEW.status = 'running';
END;

CREATE TRIGGER jobs_status_changed AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status
BEGIN
    SELECT RAISE(ABORT, 'illegal transition')
    WHERE NOT EXISTS (SELECT 1 FROM job_transitions WHERE status_from = OLD.status AND status_to = NEW.status);
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    SELECT NEW.id, (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = NEW.id), t.event,
           OLD.status, NEW.status, NEW.reason, NEW.status_ns, max(0.0, (NEW.status_ns - OLD.status_ns) / 1e6),
           NEW.attempt, NEW.worker_id
    FROM job_transitions t WHERE t.status_from = OLD.status AND t.status_to = NEW.status;
END;

CREATE TRIGGER jobs_cancel_requested AFTER UPDATE OF cancel_requested ON jobs
WHEN OLD.cancel_requested IS NULL AND NEW.cancel_requested IS NOT NULL AND OLD.status = NEW.status
BEGIN
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    VALUES (NEW.id, (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = NEW.id),
            'job.lifecycle.cancel_requested', NEW.status, NEW.status, NEW.cancel_requested, NEW.cancel_requested_ns,
            0.0, NEW.attempt, NEW.cancel_requested_by);
END;

-- The webhook outbox: one insert, for every history row a subscription wants.
CREATE TRIGGER job_history_outbox AFTER INSERT ON job_history
BEGIN
    INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, payload, history_seq, status_from,
                                    status_to, reason, at_ns, attempt, status, next_attempt_ns, created_ns,
                                    trace_id, root_span_id, trace_sampled)
    SELECT lower(hex(randomblob(16))), s.id, j.id, j.project_id, NEW.event, '{}', NEW.seq, NEW.status_from,
           NEW.status_to, NEW.reason, NEW.at_ns, NEW.attempt, 'pending', NEW.at_ns, NEW.at_ns,
           j.trace_id, j.root_span_id, j.trace_sampled
    FROM jobs j JOIN webhook_subscriptions s ON s.project_id = j.project_id
    WHERE j.id = NEW.job_id AND EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = NEW.event)
    ORDER BY s.id;
END;

-- Each finished delivery attempt is recorded with the delivery's new state.
CREATE TRIGGER webhook_delivery_attempted AFTER UPDATE OF attempts ON webhook_deliveries
WHEN NEW.attempts > OLD.attempts
BEGIN
    INSERT INTO webhook_attempts (delivery_id, attempt, at_ns, duration_ms, outcome, status_code, error)
    VALUES (NEW.id, NEW.attempts, NEW.last_attempt_ns, NEW.last_duration_ms, NEW.last_outcome,
            NEW.last_status_code, NEW.last_error);
END;
