-- A tamper-evident audit trail: every audit record is chained to the one before it by a SHA-256 hash
-- computed by the database as the record is inserted, whoever inserts it and however (one row, or a
-- set-based INSERT ... SELECT of thousands). Checkpoints (audit_checkpoint) sign the head of the chain
-- with the audit key in the token. `shomei audit verify` recomputes the whole chain in Python,
-- independently of these functions, and checks every checkpoint signature with the token's key.
--
-- Record content, hashed (format version 1; `shomei audit verify` computes the same in
-- ca_core/audit.py):
--
--     hash = sha256(prev_hash || utf8(content))      prev_hash of seq 1: 32 zero bytes (the genesis head)
--     content = the 8 fields below, each encoded as field(v), joined by the unit separator E'\x1f':
--         seq                  decimal
--         at                   UTC, microseconds: to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
--         action               as stored
--         client_id            decimal
--         operator_id          as stored
--         serial               lower-case hex of the bytes (encode(serial, 'hex'))
--         request_id           as stored
--         details              details::text (jsonb's text: keys in jsonb's order, ", " and ": ")
--     field(NULL) = '-'; field(v) = <length of v in characters, decimal> ':' v
--
-- The length prefix makes the encoding unambiguous whatever a value contains (separators, '-', ':',
-- newlines): NULL ('-') and '' ('0:') differ, and no two different records have the same content.
--
-- Chaining (triggers at the end): the head row's lock serialises chaining until the inserting
-- transaction ends, so seqs are contiguous in commit order; a transaction that rolls back leaves no
-- trace (its seqs are handed out again). seq is not UNIQUE on purpose: `shomei audit verify` finds and
-- names duplicates.

ALTER TABLE audit_log ADD COLUMN seq bigint, ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;
-- An infinite timestamp has no text in the content format.
ALTER TABLE audit_log ADD CONSTRAINT audit_log_at_finite CHECK (isfinite(at));

-- The head of the chain: its last seq and hash. Exactly one row (the key can only be true).
CREATE TABLE audit_head (
    one                boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq                bigint NOT NULL,
    hash               bytea NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Signed checkpoints of the head: signature by the audit key (key_label, in the token) over
-- b"shomei audit checkpoint\x00" || seq as 8 bytes big-endian || hash.
CREATE TABLE audit_checkpoint (
    seq                bigint PRIMARY KEY,
    hash               bytea NOT NULL,
    signed_at          timestamptz NOT NULL,
    key_label          text NOT NULL,
    signature          bytea NOT NULL
);

CREATE FUNCTION audit_field(v text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN v IS NULL THEN '-' ELSE length(v)::text || ':' || v END;

CREATE FUNCTION audit_content(seq bigint, at timestamptz, action text, client_id int, operator_id text,
                              serial bytea, request_id text, details jsonb) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN audit_field(seq::text)
        || E'\x1f' || audit_field(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || E'\x1f' || audit_field(action)
        || E'\x1f' || audit_field(client_id::text)
        || E'\x1f' || audit_field(operator_id)
        || E'\x1f' || audit_field(encode(serial, 'hex'))
        || E'\x1f' || audit_field(request_id)
        || E'\x1f' || audit_field(details::text);

-- Back-fill the records written before this migration, in id order (ALTER TABLE above holds the
-- table's exclusive lock until the migration commits: nothing is inserted meanwhile).
DO $$
DECLARE
    r record;
    n bigint := 0;
    h bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    prev bytea;
BEGIN
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        n := n + 1;
        prev := h;
        h := sha256(prev || convert_to(audit_content(n, r.at, r.action, r.client_id, r.operator_id, r.serial,
                                                     r.request_id, r.details), 'UTF8'));
        UPDATE audit_log SET seq = n, prev_hash = prev, hash = h WHERE id = r.id;
    END LOOP;
    UPDATE audit_head SET seq = n, hash = h;
END $$;

ALTER TABLE audit_log ALTER COLUMN seq SET NOT NULL, ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
CREATE INDEX audit_log_seq ON audit_log (seq, id);

-- The chaining triggers, both SECURITY DEFINER: the service role may not write audit_head itself (nor
-- update, delete or truncate audit_log); it chains through these functions only.
--
-- Per row: take the head row's lock (SELECT ... FOR UPDATE; held until the transaction ends, it
-- serialises chaining), then the chain's last record is either a record of this transaction newer than
-- the head (the statement's earlier rows, or this transaction's earlier statements: a row-level BEFORE
-- trigger sees the rows its statement inserted before) or the head itself. Per statement (AFTER):
-- move the head to the last record. The head is written once per statement rather than once per row:
-- a row version per audit record in one transaction (none can be pruned before it ends) made a feed
-- chunk or an INSERT ... SELECT of a million rows twice as slow and left the head table hundreds of
-- MB large. audit_chain must stay the last BEFORE INSERT trigger of audit_log (triggers fire in name
-- order): a later one changing the row would make its hash wrong.
CREATE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    head_seq bigint;
    head_hash bytea;
    last_seq bigint;
    last_hash bytea;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_head FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_head has no row';
    END IF;
    SELECT seq, hash INTO last_seq, last_hash FROM audit_log WHERE seq > head_seq
        ORDER BY seq DESC, id DESC LIMIT 1;
    IF NOT FOUND THEN
        last_seq := head_seq;
        last_hash := head_hash;
    END IF;
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    NEW.hash := sha256(last_hash || convert_to(audit_content(NEW.seq, NEW.at, NEW.action, NEW.client_id,
                                                             NEW.operator_id, NEW.serial, NEW.request_id,
                                                             NEW.details), 'UTF8'));
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_chain_head() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    UPDATE audit_head h SET seq = l.seq, hash = l.hash
      FROM (SELECT a.seq, a.hash FROM audit_log a WHERE a.seq > (SELECT seq FROM audit_head)
             ORDER BY a.seq DESC, a.id DESC LIMIT 1) l;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_chain();
CREATE TRIGGER audit_chain_head AFTER INSERT ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head();
