-- The lifecycle rules, kept by the database itself (the SQLite store has the same).
--
-- A status change is one UPDATE of the job row. Triggers check it against the table of
-- legal transitions (a bug in the application cannot store an illegal one), append its
-- lifecycle-history row, and write the webhook outbox rows of the subscriptions that
-- want its event: all in the statement of the change, so one round trip does it all
-- and nothing is ever half-written. A job is created with one INSERT (pending, queued or
-- running), whose trigger writes the history of the path it took. A cancellation asked
-- of a Running job is recorded in the history too (running -> running).

CREATE TABLE job_transitions (
    status_from TEXT NOT NULL,
    status_to   TEXT NOT NULL,
    event       TEXT NOT NULL,                 -- the lifecycle event the transition emits
    PRIMARY KEY (status_from, status_to)
);

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

ALTER TABLE jobs
    ADD COLUMN worker_id TEXT,                    -- the worker of the latest transition
    ADD COLUMN cancel_requested_by TEXT,
    ADD COLUMN cancel_requested_ns BIGINT;

ALTER TABLE job_history ADD COLUMN event TEXT;
UPDATE job_history h SET event = COALESCE(
    (SELECT t.event FROM job_transitions t WHERE t.status_from = h.status_from AND t.status_to = h.status_to),
    'job.lifecycle.create');
ALTER TABLE job_history ALTER COLUMN event SET NOT NULL;

-- An outbox row carries the fields of the history row it reports; the payload is built
-- from them when it is sent. (payload: rows written before this migration.)
ALTER TABLE webhook_deliveries
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN history_seq INTEGER,
    ADD COLUMN status_from TEXT,
    ADD COLUMN status_to TEXT,
    ADD COLUMN reason TEXT,
    ADD COLUMN at_ns BIGINT,
    ADD COLUMN attempt INTEGER,
    ADD COLUMN last_outcome TEXT,
    ADD COLUMN last_duration_ms DOUBLE PRECISION,
    ADD COLUMN last_attempt_ns BIGINT;

-- Retention walks terminal jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_ns) WHERE status IN ('completed', 'failed', 'cancelled');

-- Wake idle workers (LISTEN "orchestrator_jobs:<schema>") when a job enters the queue,
-- unless this session turned it off (SET orchestrator.notify = 'off'). Sent at commit.
CREATE FUNCTION orchestrator_wake() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE(current_setting('orchestrator.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('orchestrator_jobs:' || current_schema(), '');
    END IF;
END
$$;

-- The event of a legal transition; an illegal one aborts the statement (SQLSTATE OR409).
CREATE FUNCTION orchestrator_transition_event(job_id TEXT, status_from TEXT, status_to TEXT)
RETURNS TEXT LANGUAGE plpgsql STABLE AS $$
DECLARE
    found TEXT;
BEGIN
    SELECT t.event INTO found FROM job_transitions t WHERE t.status_from = $2 AND t.status_to = $3;
    IF found IS NULL THEN
        RAISE EXCEPTION 'illegal transition: job % cannot go from % to %', $1, $2, $3 USING ERRCODE = 'OR409';
    END IF;
    RETURN found;
END
$$;

CREATE FUNCTION orchestrator_job_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('pending', 'queued', 'running') THEN
        RAISE EXCEPTION 'illegal transition: job % cannot be created %', NEW.id, NEW.status USING ERRCODE = 'OR409';
    END IF;
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    VALUES (NEW.id, 1, 'job.lifecycle.create', NULL, 'pending', 'created', NEW.created_ns, 0, NEW.attempt, NULL);
    IF NEW.status <> 'pending' THEN
        INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt,
                                 worker_id)
        VALUES (NEW.id, 2, orchestrator_transition_event(NEW.id, 'pending', 'queued'), 'pending', 'queued',
                CASE WHEN NEW.status = 'queued' THEN NEW.reason ELSE 'enqueued' END, NEW.queued_ns,
                GREATEST(0, (NEW.queued_ns - NEW.created_ns) / 1e6), NEW.attempt, NULL);
    END IF;
    IF NEW.status = 'running' THEN
        INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt,
                                 worker_id)
        VALUES (NEW.id, 3, orchestrator_transition_event(NEW.id, 'queued', 'running'), 'queued', 'running',
                NEW.reason, NEW.started_ns, GREATEST(0, (NEW.started_ns - NEW.queued_ns) / 1e6), NEW.attempt,
                NEW.worker_id);
    ELSIF NEW.status = 'queued' THEN
        PERFORM orchestrator_wake();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_created AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION orchestrator_job_created();

CREATE FUNCTION orchestrator_job_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The job's row lock (held by this UPDATE) serialises every writer of its history,
    -- so the next seq is safe to compute here.
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    VALUES (NEW.id, (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = NEW.id),
            orchestrator_transition_event(NEW.id, OLD.status, NEW.status), OLD.status, NEW.status, NEW.reason,
            NEW.status_ns, GREATEST(0, (NEW.status_ns - OLD.status_ns) / 1e6), NEW.attempt, NEW.worker_id);
    IF NEW.status = 'queued' THEN
        PERFORM orchestrator_wake();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_status_changed AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION orchestrator_job_status_changed();

CREATE FUNCTION orchestrator_job_cancel_requested() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_history (job_id, seq, event, status_from, status_to, reason, at_ns, duration_ms, attempt, worker_id)
    VALUES (NEW.id, (SELECT COALESCE(MAX(h.seq), 0) + 1 FROM job_history h WHERE h.job_id = NEW.id),
            'job.lifecycle.cancel_requested', NEW.status, NEW.status, NEW.cancel_requested,
            NEW.cancel_requested_ns, 0, NEW.attempt, NEW.cancel_requested_by);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_cancel_requested AFTER UPDATE OF cancel_requested ON jobs
    FOR EACH ROW WHEN (OLD.cancel_requested IS NULL AND NEW.cancel_requested IS NOT NULL
                       AND OLD.status = NEW.status)
    EXECUTE FUNCTION orchestrator_job_cancel_requested();

-- The webhook outbox: one insert, for every history row a subscription wants.
CREATE FUNCTION orchestrator_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, subscription_id, job_id, project_id, event, history_seq, status_from,
                                    status_to, reason, at_ns, attempt, status, next_attempt_ns, created_ns,
                                    trace_id, root_span_id, trace_sampled)
    SELECT replace(gen_random_uuid()::text, '-', ''), s.id, j.id, j.project_id, NEW.event, NEW.seq,
           NEW.status_from, NEW.status_to, NEW.reason, NEW.at_ns, NEW.attempt, 'pending', NEW.at_ns, NEW.at_ns,
           j.trace_id, j.root_span_id, j.trace_sampled
    FROM jobs j JOIN webhook_subscriptions s ON s.project_id = j.project_id
    WHERE j.id = NEW.job_id AND s.events ? NEW.event
    ORDER BY s.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_history_outbox AFTER INSERT ON job_history
    FOR EACH ROW EXECUTE FUNCTION orchestrator_outbox();

-- Each finished delivery attempt is recorded with the delivery's new state.
CREATE FUNCTION orchestrator_delivery_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_attempts (delivery_id, attempt, at_ns, duration_ms, outcome, status_code, error)
    VALUES (NEW.id, NEW.attempts, NEW.last_attempt_ns, NEW.last_duration_ms, NEW.last_outcome,
            NEW.last_status_code, NEW.last_error);
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_delivery_attempted AFTER UPDATE OF attempts ON webhook_deliveries
    FOR EACH ROW WHEN (NEW.attempts > OLD.attempts) EXECUTE FUNCTION orchestrator_delivery_attempt();
