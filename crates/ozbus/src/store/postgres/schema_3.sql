-- ozbus store on PostgreSQL, schema version 3 (from version 2).
--
-- A re-send under a used idempotency key is answered as the first send was, with the sequence
-- number of the outcome it produced: the key keeps it (as the SQLite store does from its schema
-- 4 on). seq is the first sequence number the key's batch appended, NULL when the batch appended
-- no outcome (an MC, say). Keys stored before this version have NULL too: their re-sends are
-- answered without a seq.
ALTER TABLE ingest_keys ADD COLUMN seq bigint;
