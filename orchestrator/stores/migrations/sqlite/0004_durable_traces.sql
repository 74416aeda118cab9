-- Durable traces (the PostgreSQL store has the same). A job's trace can be rebuilt from
-- the store; these columns and the emitter table say when it must be.
--
-- The terminal transition (one UPDATE, as ever) records which telemetry emitter (one per
-- process) emitted the job's root span and that emitter's sequence number for it. Each
-- emitter writes, once per confirmed export batch at most, the sequence number up to
-- which every root it emitted was confirmed exported (its watermark), never past one it
-- lost without first flagging that job here (trace_lost_ns). A reconciler re-exports the
-- trace of a terminal job that is flagged, or above the watermark of an emitter whose
-- watermark has not moved for the grace period, and records it done once its own export
-- is confirmed.

ALTER TABLE jobs ADD COLUMN trace_emitter TEXT;          -- who emitted the root span
ALTER TABLE jobs ADD COLUMN trace_seq INTEGER;           -- its sequence number there
ALTER TABLE jobs ADD COLUMN trace_lost_ns INTEGER;       -- a span of the trace was lost: rebuild it
ALTER TABLE jobs ADD COLUMN trace_done_ns INTEGER;       -- rebuilt and its export confirmed
ALTER TABLE jobs ADD COLUMN trace_claim TEXT;            -- the reconciler rebuilding it
ALTER TABLE jobs ADD COLUMN trace_claim_ns INTEGER;      -- until when that claim holds

CREATE TABLE trace_emitters (
    emitter_id    TEXT PRIMARY KEY,                    -- the process's service.instance.id
    confirmed_seq INTEGER NOT NULL,                    -- every root up to it confirmed (or flagged lost)
    advanced_ns   INTEGER NOT NULL,                    -- when confirmed_seq last moved
    seen_ns       INTEGER NOT NULL                     -- the emitter's last write
) STRICT;

-- The roots of an emitter above its watermark; the jobs whose trace must be rebuilt.
CREATE INDEX jobs_trace_emitted ON jobs (trace_emitter, trace_seq) WHERE trace_emitter IS NOT NULL;
CREATE INDEX jobs_trace_lost ON jobs (finished_ns) WHERE trace_lost_ns IS NOT NULL AND trace_done_ns IS NULL;

-- An emitter's row exists from its first root on, written in the statement of that
-- terminal transition: a process killed before its first watermark write is still seen.
CREATE TRIGGER jobs_trace_emitter AFTER UPDATE OF trace_emitter ON jobs
WHEN NEW.trace_emitter IS NOT NULL AND OLD.trace_emitter IS NOT NEW.trace_emitter
BEGIN
    INSERT OR IGNORE INTO trace_emitters (emitter_id, confirmed_seq, advanced_ns, seen_ns)
    VALUES (NEW.trace_emitter, 0, NEW.status_ns, NEW.status_ns);
END;
