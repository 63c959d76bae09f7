-- ozbus store, schema version 2 (from version 1).
--
-- Idempotency keys (XK): a message that carries one is remembered in the same transaction as
-- its effect, so that a crash can never keep the one without the other; a re-send under the
-- same key (tenant and key) finds it and has no effect. accepted_ms is the commit's time, like
-- an outcome's: keys older than the dedup window no longer count, and the writer removes them.
CREATE TABLE ingest_keys (
    tenant      BLOB NOT NULL,
    key         BLOB NOT NULL,
    accepted_ms INTEGER NOT NULL,
    UNIQUE (tenant, key)
);
CREATE INDEX ingest_keys_by_age ON ingest_keys (accepted_ms);
