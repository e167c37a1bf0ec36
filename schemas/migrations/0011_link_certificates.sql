-- Key rollover link certificates (RFC 4210 section 4.4): when a CA makes a new key generation, the new
-- public key certified by the old key (new_with_old) and the old public key certified by the new key
-- (old_with_new), so that a relying party trusting either root can validate certificates of the other.
CREATE TABLE ca_link_certificate (
    new_generation_id  int NOT NULL REFERENCES ca_generation (id),
    old_generation_id  int NOT NULL REFERENCES ca_generation (id),
    direction          text NOT NULL CHECK (direction IN ('new_with_old', 'old_with_new')),
    certificate        bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (new_generation_id, direction)
);
