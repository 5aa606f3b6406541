-- Retention (issue 11): each relay deletes the job_events rows of jobs finished longer ago than
-- SPINBOT_RETENTION_HOURS. It walks events by age, so what it reads each round is what it may delete
-- (plus the events of jobs still running), never the whole history.
CREATE INDEX IF NOT EXISTS job_events_created_idx ON job_events (created);
