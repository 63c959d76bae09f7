-- ozbus store, schema version 3 (from version 2).
--
-- Persisted transactions are read one at a time, when a request needs one, instead of all at
-- start. An EO must still be refused (EC 809) when its TX names a persisted transaction of its
-- tenant that nobody has read since the start, so the TX is a column of its own, indexed; it
-- is the TX of the EO in `request`, which only the service can read: the migration fills it for
-- rows stored before this version (see `schema.rs`).
--
-- run numbers the store's starts (meta.run is this start's). A row is written with the run that
-- wrote it, so a row still held (released_ms NULL) from an earlier run is known, without
-- touching it, to have been held when that run stopped: it counts as released at this start.
-- The persist TTL finds released rows by released_ms; the index leaves held ones out, so that
-- a release or a re-issue moves one index entry, not two. Rows held when a run stopped are
-- found once after the next start, by one pass over the table in bounded steps.
ALTER TABLE transactions ADD COLUMN tx BLOB;
ALTER TABLE transactions ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meta ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
CREATE INDEX transactions_by_tx ON transactions (tenant, tx);
CREATE INDEX transactions_by_release ON transactions (released_ms)
    WHERE released_ms IS NOT NULL;
