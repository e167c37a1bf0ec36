-- Authority follows the resident's municipality: a terminal acts on the certificates issued in its
-- municipality, or of residents who have since moved in (the register's moved events name where to).
-- The call centre's client kind, national, may place holds anywhere and do nothing else.
CREATE TABLE resident_residence (
    resident_hash      bytea PRIMARY KEY,
    municipality_code  text NOT NULL CHECK (municipality_code ~ '^[0-9]{6}$'),
    since              timestamptz NOT NULL,
    event_id           text NOT NULL
);

ALTER TABLE client DROP CONSTRAINT client_kind_check;
ALTER TABLE client ADD CONSTRAINT client_kind_check CHECK (kind IN ('terminal', 'feed', 'verifier', 'national'));
