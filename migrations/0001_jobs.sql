-- Jobs and their event log. One row per job; one event per pub/sub message.
CREATE TABLE IF NOT EXISTS jobs (
    job_id          uuid PRIMARY KEY,
    status          text NOT NULL,
    progress        double precision NOT NULL DEFAULT 0,
    pipeline        text,
    last_graph      jsonb,
    idempotency_key text UNIQUE,
    created         timestamptz NOT NULL DEFAULT now(),
    updated         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created DESC);

-- `fingerprint` makes each pub/sub message land once even when several relays hear it.
CREATE TABLE IF NOT EXISTS job_events (
    event_id    bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    status      text,
    progress    double precision,
    data        jsonb,
    fingerprint text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS job_events_job_id_idx ON job_events (job_id, event_id DESC);
