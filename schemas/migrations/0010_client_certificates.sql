-- Clients authenticate with certificates of the operations CA (its key is in the token, apart from the
-- resident CAs). A client is found by the serial of the certificate it presented; a disabled client or a
-- retired certificate (rotated away) is refused. Terminals' requests name a registered operator of
-- their municipality (national clients: an operator registered as national).
CREATE TABLE operations_ca (
    id                 serial PRIMARY KEY,
    generation         int NOT NULL UNIQUE,
    key_label          text NOT NULL UNIQUE,
    key_type           text NOT NULL,
    certificate        bytea NOT NULL,
    not_after          timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE client_certificate (
    serial             bytea PRIMARY KEY,
    client_id          int NOT NULL REFERENCES client (id),
    operations_ca_id   int NOT NULL REFERENCES operations_ca (id),
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    retired_at         timestamptz
);
CREATE INDEX client_certificate_client ON client_certificate (client_id);

-- Bearer credentials remain only for OCSP verifiers (usage accounting on the public listener).
ALTER TABLE client ALTER COLUMN token_hash DROP NOT NULL;

CREATE TABLE operator (
    scope              text NOT NULL CHECK (scope = 'national' OR scope ~ '^[0-9]{6}$'),
    operator_id        text NOT NULL CHECK (operator_id ~ '^[A-Za-z0-9._@-]{1,64}$'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    disabled_at        timestamptz,
    PRIMARY KEY (scope, operator_id)
);
