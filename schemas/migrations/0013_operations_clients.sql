-- Client kind `operations`: people and tools of the operations team, who read the operators' status
-- page on the private listener with a client certificate of the operations CA (and nothing else).
ALTER TABLE client DROP CONSTRAINT client_kind_check;
ALTER TABLE client ADD CONSTRAINT client_kind_check
    CHECK (kind IN ('terminal', 'feed', 'verifier', 'national', 'operations'));
