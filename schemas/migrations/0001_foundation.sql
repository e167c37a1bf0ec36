-- Foundation: CA generations, clients, municipalities, certificates, revocations, audit.

CREATE TABLE ca_generation (
    id                 serial PRIMARY KEY,
    ca_id              text NOT NULL CHECK (ca_id IN ('signing', 'auth')),
    generation         int NOT NULL CHECK (generation > 0),
    key_label          text NOT NULL UNIQUE,          -- CKA_LABEL of the private key in the token
    key_type           text NOT NULL,
    key_id             bytea NOT NULL UNIQUE,         -- subjectKeyIdentifier
    certificate        bytea NOT NULL,
    fingerprint_sha256 text NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    is_current         boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ca_id, generation)
);
CREATE UNIQUE INDEX ca_generation_one_current ON ca_generation (ca_id) WHERE is_current;

-- Delegated OCSP responders (RFC 6960 4.2.2.2), one or more per CA generation over time.
CREATE TABLE ocsp_responder (
    id                 serial PRIMARY KEY,
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    key_label          text NOT NULL UNIQUE,
    certificate        bytea NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- API clients: municipal terminals, the resident-register feed, registered OCSP verifiers.
-- Only a SHA-256 hash of each bearer credential is kept.
CREATE TABLE client (
    id                 serial PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('terminal', 'feed', 'verifier')),
    name               text NOT NULL UNIQUE,
    token_hash         bytea NOT NULL UNIQUE,
    municipality_code  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    disabled_at        timestamptz,
    CHECK (kind <> 'terminal' OR municipality_code IS NOT NULL)
);

-- Municipality names in romaji, as they appear in signing certificate subjects (L=).
CREATE TABLE municipality (
    code               text PRIMARY KEY CHECK (code ~ '^[0-9]{6}$'),
    name_romaji        text NOT NULL
);
INSERT INTO municipality (code, name_romaji) VALUES
    ('011002', 'Sapporo-shi'),
    ('131016', 'Chiyoda-ku'),
    ('131041', 'Shinjuku-ku'),
    ('141003', 'Yokohama-shi'),
    ('231002', 'Nagoya-shi'),
    ('261009', 'Kyoto-shi'),
    ('271004', 'Osaka-shi'),
    ('401307', 'Fukuoka-shi');

-- One row per issuance request (idempotency key per client).
CREATE TABLE issuance (
    id                 bigserial PRIMARY KEY,
    client_id          int NOT NULL REFERENCES client (id),
    request_id         text NOT NULL,
    body_hash          bytea NOT NULL,
    operator_id        text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, request_id)
);

-- Certificate ids are taken from this sequence before signing: the id decides the CRL partition.
CREATE SEQUENCE certificate_id_seq;

CREATE TABLE certificate (
    id                 bigint PRIMARY KEY,
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    serial             bytea NOT NULL UNIQUE,
    kind               text NOT NULL CHECK (kind IN ('signing', 'auth')),
    resident_hash      bytea NOT NULL,               -- HMAC-SHA256 of the resident code
    municipality_code  text NOT NULL,
    partition          int NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'held', 'revoked')),
    der                bytea NOT NULL,
    issuance_id        bigint REFERENCES issuance (id),
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_resident ON certificate (resident_hash, kind);
CREATE INDEX certificate_issuance ON certificate (issuance_id);
-- At most one certificate of each kind per resident that is not revoked.
CREATE UNIQUE INDEX certificate_one_live ON certificate (resident_hash, kind) WHERE status <> 'revoked';

-- Every revocation and hold, kept as history: a hold that is released or turned into a revocation
-- gets released_at and is never deleted. entry_der is the CRL entry, encoded once at revocation.
CREATE TABLE revocation (
    id                 bigserial PRIMARY KEY,
    certificate_id     bigint NOT NULL REFERENCES certificate (id),
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    serial             bytea NOT NULL,
    partition          int NOT NULL,
    cert_not_after     timestamptz NOT NULL,
    reason             smallint NOT NULL,            -- CRLReason (RFC 5280 5.3.1); 6 = certificateHold
    revoked_at         timestamptz NOT NULL,         -- revocationDate
    effective_at       timestamptz,                  -- NULL: accepted online, effective at the next CRL
    invalidity_date    timestamptz,
    source             text NOT NULL CHECK (source IN ('window', 'online', 'feed', 'hold', 'supersede', 'operator')),
    source_ref         text,
    entry_der          bytea NOT NULL,
    released_at        timestamptz,                  -- hold released or replaced by a revocation
    release_kind       text CHECK (release_kind IN ('hold_released', 'hold_revoked')),
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX revocation_active ON revocation (certificate_id) WHERE released_at IS NULL;
CREATE INDEX revocation_crl ON revocation (ca_generation_id, serial) WHERE released_at IS NULL;
CREATE INDEX revocation_partition ON revocation (ca_generation_id, partition, serial) WHERE released_at IS NULL;

-- Audit trail: every mutating action, in the transaction that makes it. No personal data.
CREATE TABLE audit_log (
    id                 bigserial PRIMARY KEY,
    at                 timestamptz NOT NULL DEFAULT now(),
    client_id          int REFERENCES client (id),
    operator_id        text,
    action             text NOT NULL,
    serial             bytea,
    request_id         text,
    details            jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_serial ON audit_log (serial);
