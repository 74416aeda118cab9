-- Webhook subscriptions, the delivery outbox (written in the statement of the
-- transition it reports) and the history of delivery attempts.
CREATE TABLE webhook_subscriptions (
    id         TEXT COLLATE "C" PRIMARY KEY,
    project_id TEXT NOT NULL,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    events     JSONB NOT NULL,                      -- array of lifecycle event names
    created_ns BIGINT NOT NULL
);

CREATE INDEX webhook_subscriptions_project ON webhook_subscriptions (project_id);

CREATE TABLE webhook_deliveries (
    seq              BIGSERIAL PRIMARY KEY,            -- outbox order
    id               TEXT COLLATE "C" NOT NULL UNIQUE, -- X-Orchestrator-Delivery
    subscription_id  TEXT COLLATE "C" NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    job_id           TEXT COLLATE "C" NOT NULL,
    project_id       TEXT NOT NULL,
    event            TEXT NOT NULL,
    payload          JSONB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns  BIGINT NOT NULL,
    created_ns       BIGINT NOT NULL,
    finished_ns      BIGINT,
    last_status_code INTEGER,
    last_error       TEXT,
    trace_id         TEXT NOT NULL,
    root_span_id     TEXT NOT NULL,
    trace_sampled    BOOLEAN NOT NULL,
    lease_owner      TEXT,
    lease_expires_ns BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ns) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (subscription_id, job_id, seq);

CREATE TABLE webhook_attempts (
    delivery_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at_ns       BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
