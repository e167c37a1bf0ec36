-- Revocation lifecycle: pending online revocations, window idempotency, feed events, online nonces.
-- depends: 0001_foundation

-- An online revocation is accepted at once (effective_at NULL) and becomes effective at the next CRL
-- issuance. Until then the certificate keeps its status, and a hold in force may coexist with it:
-- at most one row in force (effective) and at most one pending row per certificate.
DROP INDEX revocation_active;
CREATE UNIQUE INDEX revocation_in_force ON revocation (certificate_id)
    WHERE released_at IS NULL AND effective_at IS NOT NULL;
CREATE UNIQUE INDEX revocation_pending ON revocation (certificate_id)
    WHERE released_at IS NULL AND effective_at IS NULL;

-- A pending online revocation that a window or feed revocation made moot before it took effect ends
-- as 'pending_replaced' (it never appeared in any CRL: effective_at stays NULL).
ALTER TABLE revocation DROP CONSTRAINT revocation_release_kind_check;
ALTER TABLE revocation ADD CONSTRAINT revocation_release_kind_check
    CHECK (release_kind IN ('hold_released', 'hold_revoked', 'pending_replaced'));

-- Status history (hold placed, released, turned into a revocation) is the revocation rows themselves:
-- revoked_at/effective_at and released_at/release_kind; the CRL migration indexes what deltas read.

-- Window requests (revocations, holds, hold releases), idempotent per terminal and request_id:
-- the answer is stored with the work, in the same transaction, and replayed on a retry.
CREATE TABLE window_request (
    id                 bigserial PRIMARY KEY,
    client_id          int NOT NULL REFERENCES client (id),
    request_id         text NOT NULL,
    action             text NOT NULL CHECK (action IN ('revoke', 'hold', 'release')),
    body_hash          bytea NOT NULL,
    operator_id        text NOT NULL,
    response           jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, request_id)
);

-- Resident-register feed events (住基連携): one row per event id, with its outcome, written in the
-- transaction that applies it. A resent event finds its row and is answered 'duplicate'.
CREATE TABLE feed_event (
    event_id           text PRIMARY KEY,
    client_id          int NOT NULL REFERENCES client (id),
    resident_hash      bytea NOT NULL,
    kind               text NOT NULL,
    occurred_at        timestamptz NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('applied', 'no_certificate', 'rejected')),
    detail             text,
    revoked            int NOT NULL DEFAULT 0,
    applied_at         timestamptz NOT NULL
);
CREATE INDEX feed_event_resident ON feed_event (resident_hash);

-- Residents entitled to a free reissue (address notation change, municipal merger, recording error).
CREATE TABLE free_reissue (
    id                 bigserial PRIMARY KEY,
    resident_hash      bytea NOT NULL,
    cause              text NOT NULL,
    source_ref         text,
    created_at         timestamptz NOT NULL,
    used_at            timestamptz
);
CREATE INDEX free_reissue_resident ON free_reissue (resident_hash) WHERE used_at IS NULL;

-- Online window applications: every nonce seen (replay detection), with what became of it.
CREATE TABLE online_nonce (
    nonce              bytea PRIMARY KEY,
    serial             bytea NOT NULL,
    procedure          text NOT NULL,
    result             text NOT NULL,
    issued_at          timestamptz NOT NULL,
    seen_at            timestamptz NOT NULL
);
CREATE INDEX online_nonce_seen ON online_nonce (seen_at);
