-- Jobs, their lifecycle history. Timestamps are Unix nanoseconds (OpenTelemetry's unit).
-- Ids are compared byte-wise (COLLATE "C") so that "newest first" and the pagination
-- cursor order uuid7 ids exactly as SQLite does, whatever the database's collation.
CREATE TABLE jobs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    project_id       TEXT NOT NULL,
    source           TEXT NOT NULL,
    modules          JSONB NOT NULL,                   -- array of module names
    options          JSONB NOT NULL,                   -- object
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 1,
    created_ns       BIGINT NOT NULL,
    status_ns        BIGINT NOT NULL,                  -- when the job entered its current status
    queued_ns        BIGINT,
    started_ns       BIGINT,
    finished_ns      BIGINT,
    reason           TEXT,
    error_category   TEXT,
    error_phase      TEXT,
    results          JSONB NOT NULL DEFAULT '[]'::jsonb,
    trace_id         TEXT NOT NULL,
    root_span_id     TEXT NOT NULL,
    trace_sampled    BOOLEAN NOT NULL,
    trace_link       TEXT,
    lease_owner      TEXT,
    lease_expires_ns BIGINT,
    cancel_requested TEXT
);

-- Claiming walks this index oldest first and skips rows other workers have locked.
CREATE INDEX jobs_claimable ON jobs (queued_ns, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_ns) WHERE status = 'running';
CREATE INDEX jobs_project ON jobs (project_id, id);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE job_history (
    job_id      TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    status_from TEXT,
    status_to   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at_ns       BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,            -- time spent in status_from
    attempt     INTEGER NOT NULL,
    worker_id   TEXT,
    PRIMARY KEY (job_id, seq)
);
