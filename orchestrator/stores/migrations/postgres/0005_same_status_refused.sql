-- A status "change" that keeps the status is refused too: the transition triggers of 0003
-- fire only when the status changes, so an UPDATE keeping it (a finished job "completed ->
-- completed") would rewrite its reason, timestamps and results with no history row. No
-- statement of ours sets a job's status to the one it has (claims move Queued jobs only,
-- transitions are checked against the table first); this makes the database say so too.
CREATE FUNCTION orchestrator_refuse_same_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'illegal transition: job % is already %', NEW.id, NEW.status USING ERRCODE = 'OR409';
END
$$;

CREATE TRIGGER jobs_same_status BEFORE UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status = NEW.status) EXECUTE FUNCTION orchestrator_refuse_same_status();
