-- A replaced CA generation keeps publishing CRLs (and answering OCSP) until the last certificate it
-- issued has expired; then a final CRL of each scope is published, with nextUpdate at the CA
-- certificate's own end, and the generation is retired: nothing is published for it any more.
ALTER TABLE ca_generation ADD COLUMN retired_at timestamptz;
CREATE INDEX certificate_generation_not_after ON certificate (ca_generation_id, not_after);
