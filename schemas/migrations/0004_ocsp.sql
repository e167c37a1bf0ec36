-- OCSP responder: the shared cache of signed answers, per-verifier answer counts, and status triggers.

-- Signed answers without a nonce, shared by every process and kept across restarts. A row is only
-- used when its status_key equals the status read in the same query (ca_core.ocsp.CertStatus.key), so
-- a row written by a signer that raced a revocation is never served; the trigger below also deletes
-- the rows of a certificate whose status changes.
CREATE TABLE ocsp_response_cache (
    cert_id            bytea PRIMARY KEY,              -- the CertID DER the answer is for
    ca_generation_id   int NOT NULL REFERENCES ca_generation (id),
    serial             bytea NOT NULL,
    status_key         text NOT NULL,
    response           bytea NOT NULL,                 -- OCSPResponse DER
    this_update        timestamptz NOT NULL,
    next_update        timestamptz NOT NULL
);
CREATE INDEX ocsp_response_cache_serial ON ocsp_response_cache (serial);

-- Billing: answers per registered verifier per day (JST), incremented in batches by each process.
CREATE TABLE ocsp_verifier_usage (
    client_id          int NOT NULL REFERENCES client (id),
    day                date NOT NULL,
    answers            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, day)
);

-- The hold a pending online revocation replaced is found by certificate (history rows included).
CREATE INDEX ocsp_revocation_certificate ON revocation (certificate_id);

-- Every change of a certificate's status, of a revocation (made effective by a CRL issuance, a hold
-- released), and every new certificate (it may have been answered `unknown`) drops the cached answers
-- of that serial in the same transaction and notifies the responders on commit (channel shomei_status,
-- payload the hex serial, storage/status_notices.py; PostgreSQL folds duplicates).
CREATE FUNCTION ocsp_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ocsp_response_cache WHERE serial = NEW.serial;
    PERFORM pg_notify('shomei_status', ltrim(encode(NEW.serial, 'hex'), '0'));
    RETURN NULL;
END
$$;

CREATE TRIGGER ocsp_certificate_status AFTER UPDATE OF status ON certificate
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION ocsp_status_changed();
CREATE TRIGGER ocsp_certificate_insert AFTER INSERT ON certificate
    FOR EACH ROW EXECUTE FUNCTION ocsp_status_changed();
CREATE TRIGGER ocsp_revocation_change AFTER INSERT OR UPDATE ON revocation
    FOR EACH ROW EXECUTE FUNCTION ocsp_status_changed();
