-- ozbus store on PostgreSQL, schema version 2 (from version 1).
--
-- Persisted transactions are read one at a time, when a request needs one, instead of all at
-- start (as the SQLite store does from its schema 3 on). `tx` is the TX of the EO in `request`,
-- indexed, so that an EO naming the TX of a transaction nobody has read since the start is
-- still refused (EC 809); rows stored before this version get it when a store opens (only the
-- service can read a request). `node` is the node that last wrote the row: a row still held
-- (released_ms NULL) by a node that is no longer alive was held when that node stopped. `id`
-- orders a pass over the table in bounded steps.
ALTER TABLE transactions ADD COLUMN tx bytea;
ALTER TABLE transactions ADD COLUMN node bigint NOT NULL DEFAULT 0;
ALTER TABLE transactions ADD COLUMN id bigserial;
CREATE UNIQUE INDEX transactions_by_id ON transactions (id);
CREATE INDEX transactions_by_tx ON transactions (tenant, tx);
CREATE INDEX transactions_by_release ON transactions (released_ms)
    WHERE released_ms IS NOT NULL;

-- The nodes: each open store has a row, refreshed every few seconds (`seen_ms`) and marked
-- stopped when it closes (or when another node starts in its directory). A node is alive while
-- its row is not stopped and fresh; a missing row (removed a day after) is not alive either.
CREATE TABLE nodes (
    node       bigint PRIMARY KEY,
    started_ms bigint NOT NULL,
    seen_ms    bigint NOT NULL,
    stopped    boolean NOT NULL DEFAULT false
);

-- The database's clock in milliseconds since the epoch: nodes compare times written by other
-- nodes on this one clock, never on their own.
CREATE FUNCTION ozbus_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS 'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint';
