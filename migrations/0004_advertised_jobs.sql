-- Each relay looks for jobs left `advertised` by a retry whose API died before Temporal took the new run
-- (handoff/unstarted.py). Few rows are advertised at any time; this keeps that look-up off the whole table.
CREATE INDEX IF NOT EXISTS jobs_advertised_idx ON jobs (updated) WHERE status = 'advertised';
