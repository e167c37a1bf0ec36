-- Partition CRLs stream from an index-only scan too, like the full CRL (0003): the partition's entries
-- in serial order with what the CRL needs, without a visit to the table per entry (measured: a third
-- less time for 200 partition CRLs of 20,000 entries each). It replaces the partition index of 0001,
-- whose only reader was the partition CRL.
CREATE INDEX revocation_partition_stream ON revocation (ca_generation_id, partition, serial)
    INCLUDE (cert_not_after, entry_der) WHERE released_at IS NULL AND effective_at IS NOT NULL;
DROP INDEX revocation_partition;
