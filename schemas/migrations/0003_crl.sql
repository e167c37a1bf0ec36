-- CRL publishing: change tracking by transaction id, partitions, CRL numbers, published CRLs.

-- Which transaction made a revocation row effective, and which one released it.
--
-- Why transaction ids and not timestamps: effective_at/released_at are set by application clocks and
-- commit in any order, so "changed after the base's thisUpdate" would lose a change whose
-- transaction committed after the base was built but carries an earlier time. Instead every CRL
-- records the PostgreSQL snapshot (pg_current_snapshot()) under which its entries were read; a
-- change belongs to a delta exactly when its transaction is NOT visible in the base's snapshot
-- (pg_visible_in_snapshot) and is visible to the delta's own snapshot. Nothing in flight can be
-- missed or counted twice, whatever the clocks say. xid8 never wraps around.
ALTER TABLE revocation ADD COLUMN effective_xid xid8, ADD COLUMN released_xid xid8;

CREATE FUNCTION revocation_track_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.effective_at IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.effective_at IS NULL) THEN
        NEW.effective_xid := pg_current_xact_id();
    END IF;
    IF NEW.released_at IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.released_at IS NULL) THEN
        NEW.released_xid := pg_current_xact_id();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER revocation_track_xid BEFORE INSERT OR UPDATE OF effective_at, released_at ON revocation
    FOR EACH ROW EXECUTE FUNCTION revocation_track_xid();

-- The full CRL streams from an index-only scan in serial order (entries are stored once, at
-- revocation; this index keeps them in the order the CRL wants them).
CREATE INDEX revocation_crl_stream ON revocation (ca_generation_id, serial) INCLUDE (cert_not_after, entry_der)
    WHERE released_at IS NULL AND effective_at IS NOT NULL;
-- Deltas look up changes after the base snapshot's xmin.
CREATE INDEX revocation_effective_xid ON revocation (ca_generation_id, effective_xid)
    WHERE effective_xid IS NOT NULL;
CREATE INDEX revocation_released_xid ON revocation (ca_generation_id, released_xid)
    WHERE release_kind = 'hold_released';

-- The CRL partitions that certificates were assigned to, per CA generation (filled on insert).
CREATE TABLE crl_partition (
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    partition          int NOT NULL,
    PRIMARY KEY (ca_generation_id, partition)
);
INSERT INTO crl_partition SELECT DISTINCT ca_generation_id, partition FROM certificate;

CREATE FUNCTION certificate_crl_partition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crl_partition (ca_generation_id, partition)
        SELECT DISTINCT ca_generation_id, partition FROM new_rows
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER certificate_crl_partition AFTER INSERT ON certificate
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION certificate_crl_partition();

-- CRL numbers: one monotonic sequence per CA generation and scope ('full' or 'p<n>'), shared by the
-- complete CRLs of that scope and their deltas (RFC 5280 5.2.3). Never goes backwards.
CREATE TABLE crl_number (
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    scope              text NOT NULL,
    last_number        numeric NOT NULL,
    PRIMARY KEY (ca_generation_id, scope)
);

-- Every CRL published: what a delta needs of its base (number, snapshot), and what /metrics and
-- the scheduler read.
CREATE TABLE crl (
    id                 bigserial PRIMARY KEY,
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    scope              text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('base', 'delta')),
    crl_number         numeric NOT NULL,
    base_id            bigint REFERENCES crl (id),
    this_update        timestamptz NOT NULL,
    next_update        timestamptz NOT NULL,
    snapshot           pg_snapshot NOT NULL,
    entries            bigint NOT NULL,
    bytes              bigint NOT NULL,
    sha256             bytea NOT NULL,
    path               text NOT NULL,
    published_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ca_generation_id, scope, crl_number),
    CHECK ((kind = 'delta') = (base_id IS NOT NULL))
);
CREATE INDEX crl_latest ON crl (ca_generation_id, scope, kind, crl_number DESC);

-- crl_publisher.publisher.activate_pending runs at the start of every CRL issuance: find the accepted
-- online revocations without scanning the table.
CREATE INDEX IF NOT EXISTS revocation_pending ON revocation (certificate_id)
    WHERE effective_at IS NULL AND released_at IS NULL;
