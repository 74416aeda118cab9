-- A status "change" that keeps the status is refused too (see the PostgreSQL migration of the
-- same number): an UPDATE keeping it would rewrite a finished job with no history row.
CREATE TRIGGER jobs_same_status BEFORE UPDATE OF status ON jobs WHEN OLD.status = NEW.status
BEGIN
    SELECT RAISE(ABORT, 'illegal transition: a job is already in that status');
END;
