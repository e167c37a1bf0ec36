-- What the operators' status page shows of traffic and work in progress, shared by every process on
-- every host (nothing of it lives in one process's memory).
--
-- OCSP answers per minute (UTC minute), added to by each responder process at its flush: answers of
-- every kind, misses (successful answers that were not in the process's memory: read from the shared
-- cache or signed), and error answers. Rows older than two days are purged by the responders.
CREATE TABLE ocsp_minute (
    minute   timestamptz PRIMARY KEY,
    answers  bigint NOT NULL DEFAULT 0,
    misses   bigint NOT NULL DEFAULT 0,
    errors   bigint NOT NULL DEFAULT 0
);

-- Feed batches being applied that span more than one transaction (chunk): how many events each holds
-- and how many are applied so far. The row goes when the batch ends; a row no longer updated is a batch
-- cut off (its sender resends it). Unlogged: it describes the present, a crash may lose it.
CREATE UNLOGGED TABLE feed_batch (
    id          uuid PRIMARY KEY,
    client_id   int NOT NULL,
    events      int NOT NULL,
    applied     int NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The status page reads the newest feed events and the last 24 hours' by outcome.
CREATE INDEX feed_event_applied ON feed_event (applied_at);
