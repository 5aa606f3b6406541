-- The run a retry replaced, recorded with the retry's claim. A retry whose API died before Temporal took the new
-- run is known by it: that run is still the job's latest. Before, the claim's time (PostgreSQL's clock) was compared
-- with the run's close time (Temporal's), which a PostgreSQL clock running behind could misjudge for good.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retried_run text;
