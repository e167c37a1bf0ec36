-- A full CRL published in the same pass as its generation's partition CRLs (one snapshot; the entries
-- read once, partition by partition) lists the same entry bytes as those partition CRLs. Its content is
-- then stored by reference: its own parts (head, tail, and the entries of any partition whose CRL was
-- not published in the pass) in crl_content, and for each partition published in the pass one row here
-- naming that partition CRL's entry parts. A host reassembles the CRL by reading, in `part` order, either
-- its own part or the referenced parts in their order (storage.crls.content), and checks the whole as
-- before (size, SHA-256 of the TBSCertList, the CA's signature), so a damaged or missing referenced part
-- is refused like a damaged own part.
--
-- Pruning (storage.crls.record_published) keeps the content of the latest two CRLs of each path and
-- never deletes a part still referenced by a kept CRL: a referenced CRL's content goes only once no
-- reference to it is left and it is not among the latest two of its own path.
CREATE TABLE crl_content_ref (
    crl_id      bigint NOT NULL REFERENCES crl (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    part        int NOT NULL,           -- position among crl_id's parts (crl_content.part of the same CRL)
    source_id   bigint NOT NULL REFERENCES crl (id),
    first_part  int NOT NULL,           -- source_id's parts first_part..last_part, in order
    last_part   int NOT NULL,
    PRIMARY KEY (crl_id, part),
    CHECK (first_part <= last_part)
);
CREATE INDEX crl_content_ref_source ON crl_content_ref (source_id);

-- The entries' DER has structure (tags, lengths, dates, reason codes) around the random serials: lz4
-- compression of the stored parts (out of line) shrinks what is written, WAL included (to 44% in the
-- benchmark, whose entries share one revocation date; real entries compress less). A server built
-- without lz4 keeps the default compression.
ALTER TABLE crl_content ALTER COLUMN data SET STORAGE EXTENDED;
DO $$
BEGIN
    ALTER TABLE crl_content ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this PostgreSQL has no lz4: CRL content keeps the default compression';
END
$$;
