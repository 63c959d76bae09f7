-- ozbus store on PostgreSQL, schema version 2 (from version 1).
--
-- The TX each persisted transaction is open under, as the SQLite store keeps it from its
-- schema 3 on (`PersistedTransaction::tx`). Rows stored before have none (NULL: read as empty).
-- The lookups the SQLite store answers with it (by TX, counts per tenant, due for the TTL) are
-- not offered here yet, so neither is an index for them.
ALTER TABLE transactions ADD COLUMN tx bytea;
