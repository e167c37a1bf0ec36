-- Status triggers per statement instead of per row: the feed revokes tens of thousands of certificates
-- in one statement, and a row trigger ran a DELETE and a pg_notify for each of them. The statement
-- triggers delete the cached answers of all changed serials in one join, and notify each serial; above
-- 1,000 changed serials they send one '*' instead, which tells every responder to drop its memory cache.

DROP TRIGGER ocsp_certificate_status ON certificate;
DROP TRIGGER ocsp_certificate_insert ON certificate;
DROP TRIGGER ocsp_revocation_change ON revocation;
DROP FUNCTION ocsp_status_changed();

CREATE FUNCTION ocsp_serials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed bytea[];
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'certificate' THEN
        SELECT array_agg(DISTINCT n.serial) INTO changed
            FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE o.status IS DISTINCT FROM n.status;
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

CREATE TRIGGER ocsp_certificate_status AFTER UPDATE ON certificate
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ocsp_serials_changed();
CREATE TRIGGER ocsp_certificate_insert AFTER INSERT ON certificate
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ocsp_serials_changed();
CREATE TRIGGER ocsp_revocation_insert AFTER INSERT ON revocation
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ocsp_serials_changed();
CREATE TRIGGER ocsp_revocation_update AFTER UPDATE ON revocation
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ocsp_serials_changed();
