-- One source for every certificate's status.
--
-- The revocation row in force (effective, not released) is the truth: at most one per certificate
-- (unique index revocation_in_force). The CRLs stream these rows. The certificate row carries a copy
-- of the status (status, status_reason, status_at = revocationDate) that only the database writes:
-- statement triggers on revocation derive it from the row in force, and a trigger refuses any other
-- write. OCSP, the online window and the window read that one row, so no answer can come from "the
-- first of several rows", and no write path can forget to update it.

-- An accepted online revocation has no CRL entry until it takes effect: its revocationDate is the time
-- it becomes effective (at the next CRL issuance), so the entry is encoded then.
ALTER TABLE revocation ALTER COLUMN entry_der DROP NOT NULL;
ALTER TABLE revocation ADD CONSTRAINT revocation_effective_has_entry
    CHECK (effective_at IS NULL OR entry_der IS NOT NULL);

ALTER TABLE certificate ADD COLUMN status_reason smallint, ADD COLUMN status_at timestamptz;
UPDATE certificate c SET status_reason = r.reason, status_at = r.revoked_at
    FROM revocation r
    WHERE r.certificate_id = c.id AND r.released_at IS NULL AND r.effective_at IS NOT NULL;
UPDATE certificate c SET status = CASE WHEN status_reason IS NULL THEN 'valid'
                                       WHEN status_reason = 6 THEN 'held' ELSE 'revoked' END;
ALTER TABLE certificate ADD CONSTRAINT certificate_status_consistent CHECK (
    (status = 'valid' AND status_reason IS NULL AND status_at IS NULL)
    OR (status = 'held' AND status_reason = 6 AND status_at IS NOT NULL)
    OR (status = 'revoked' AND status_reason IS NOT NULL AND status_reason <> 6 AND status_at IS NOT NULL));

CREATE FUNCTION certificate_status_derive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE certificate c
       SET status = s.status, status_reason = s.reason, status_at = s.at
      FROM (SELECT ch.id,
                   CASE WHEN r.id IS NULL THEN 'valid' WHEN r.reason = 6 THEN 'held' ELSE 'revoked' END AS status,
                   r.reason, r.revoked_at AS at
              FROM (SELECT DISTINCT certificate_id AS id FROM new_rows) ch
              LEFT JOIN revocation r ON r.certificate_id = ch.id
                                    AND r.released_at IS NULL AND r.effective_at IS NOT NULL) s
     WHERE c.id = s.id
       AND (c.status, c.status_reason, c.status_at) IS DISTINCT FROM (s.status, s.reason, s.at);
    RETURN NULL;
END $$;

CREATE TRIGGER certificate_status_on_insert AFTER INSERT ON revocation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION certificate_status_derive();
CREATE TRIGGER certificate_status_on_update AFTER UPDATE ON revocation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION certificate_status_derive();

-- Nobody but certificate_status_derive (which runs inside a trigger, depth 2 here) writes the status.
CREATE FUNCTION certificate_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'valid' THEN
            RAISE EXCEPTION 'a certificate is inserted valid; its status follows its revocations'
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF pg_trigger_depth() < 2
          AND (NEW.status, NEW.status_reason, NEW.status_at) IS DISTINCT FROM
              (OLD.status, OLD.status_reason, OLD.status_at) THEN
        RAISE EXCEPTION 'certificate status is derived from its revocations; write a revocation row'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER certificate_status_guard BEFORE INSERT OR UPDATE ON certificate
    FOR EACH ROW EXECUTE FUNCTION certificate_status_guard();

-- OCSP invalidation follows every change of the derived status (reason and date included).
CREATE OR REPLACE FUNCTION ocsp_serials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed bytea[];
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'certificate' THEN
        SELECT array_agg(DISTINCT n.serial) INTO changed
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE (o.status, o.status_reason, o.status_at) IS DISTINCT FROM (n.status, n.status_reason, n.status_at);
    ELSE
        SELECT array_agg(DISTINCT serial) INTO changed FROM new_rows;
    END IF;
    IF changed IS NULL THEN
        RETURN NULL;
    END IF;
    DELETE FROM ocsp_response_cache WHERE serial = ANY (changed);
    IF cardinality(changed) > 1000 THEN
        PERFORM pg_notify('shomei_status', '*');
    ELSE
        PERFORM pg_notify('shomei_status', ltrim(encode(s, 'hex'), '0')) FROM unnest(changed) AS s;
    END IF;
    RETURN NULL;
END
$$;

-- A register event applies only to certificates issued before it occurred: the outcome of an event
-- whose resident holds only newer certificates says so.
ALTER TABLE feed_event DROP CONSTRAINT feed_event_outcome_check;
ALTER TABLE feed_event ADD CONSTRAINT feed_event_outcome_check
    CHECK (outcome IN ('applied', 'no_certificate', 'issued_after_event', 'rejected'));
