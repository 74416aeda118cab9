-- Jobs, their lifecycle history. Timestamps are Unix nanoseconds (OpenTelemetry's unit).
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL,
    source           TEXT NOT NULL,
    modules          TEXT NOT NULL,            -- JSON array of module names
    options          TEXT NOT NULL,            -- JSON object
    status           TEXT NOT NULL CHECK (status IN ('pending','queued','running','completed','failed','cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 1,
    created_ns       INTEGER NOT NULL,
    status_ns        INTEGER NOT NULL,         -- when the job entered its current status
    queued_ns        INTEGER,
    started_ns       INTEGER,
    finished_ns      INTEGER,
    reason           TEXT,
    error_category   TEXT,
    error_phase      TEXT,
    results          TEXT NOT NULL DEFAULT '[]',
    trace_id         TEXT NOT NULL,
    root_span_id     TEXT NOT NULL,
    trace_sampled    INTEGER NOT NULL,
    trace_link       TEXT,
    lease_owner      TEXT,
    lease_expires_ns INTEGER,
    cancel_requested TEXT
) STRICT;

CREATE INDEX jobs_claimable ON jobs (status, queued_ns) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_ns) WHERE status = 'running';
CREATE INDEX jobs_project ON jobs (project_id, id);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE job_history (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    status_from TEXT,
    status_to   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at_ns       INTEGER NOT NULL,
    duration_ms REAL NOT NULL,                 -- time spent in status_from
    attempt     INTEGER NOT NULL,
    worker_id   TEXT,
    PRIMARY KEY (job_id, seq)
) STRICT;
