-- The outbox trigger fires only while a webhook subscription exists (see the PostgreSQL
-- migration of the same number); with one, it writes exactly what 0003 wrote.
DROP TRIGGER job_history_outbox;

CREATE TRIGGER job_history_outbox AFTER INSERT ON job_history
WHEN EXISTS (SELECT 1 FROM webhook_subscriptions)
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
