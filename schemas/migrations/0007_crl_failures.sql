-- CRL publications that failed (folder unwritable or full, token error, ...), one row per CRL, removed
-- by its next successful publication: /healthz and /metrics of every process and host read them, while
-- the last good CRL keeps being served and the schedule retries.
CREATE TABLE crl_failure (
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    scope              text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('base', 'delta')),
    path               text NOT NULL,
    first_failed_at    timestamptz NOT NULL,
    last_failed_at     timestamptz NOT NULL,
    attempts           int NOT NULL DEFAULT 1,
    error              text NOT NULL,
    PRIMARY KEY (ca_generation_id, scope, kind)
);
