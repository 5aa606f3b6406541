-- The most progress a job may show until its workflow's next change (issue 8): reported progress is
-- clamped to it, and each workflow snapshot sets it. NULL (a job from before this column) allows no rise.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS progress_ceiling double precision;
