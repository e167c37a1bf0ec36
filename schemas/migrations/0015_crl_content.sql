-- The bytes of every published CRL, in PostgreSQL: any host serves any CRL, whoever published it, with
-- no shared folder. A CRL is published when the transaction that records its row and its content
-- commits (all or nothing: no host can see half of one); each host keeps a copy of the latest CRL of
-- each path in its own folder, fetched from here and checked against the issuing CA's signature.
--
-- Content is stored in parts in file order: part 0 is everything before the first entry (outer and
-- TBSCertList headers), parts 1..n the entries as the publisher streamed them, the last part the
-- extensions, signature algorithm and signature. Random serials and signatures do not compress, so the
-- parts are stored out of line uncompressed (STORAGE EXTERNAL). Only the latest two CRLs of each path
-- keep their content (the previous one for a host still fetching it); the rows of older ones stay.
CREATE TABLE crl_content (
    crl_id  bigint NOT NULL REFERENCES crl (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    part    int NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (crl_id, part)
);
ALTER TABLE crl_content ALTER COLUMN data SET STORAGE EXTERNAL;

-- Serving looks up the newest CRL of a path.
CREATE INDEX crl_by_path ON crl (path, crl_number DESC);
