-- ozbus store on PostgreSQL, schema version 1: everything the SQLite store has (its versions 1
-- and 2), plus what several nodes sharing one database need.
-- Values from SDMP are bytea: byte-exact, not necessarily UTF-8.

-- One row. last_seq is the high-water mark of the log: sequence numbers are never reused, also
-- after retention removed every outcome, so it cannot be derived from max(seq). Every append
-- takes its sequence numbers by updating this row, so its row lock orders appends from every
-- node: numbers are handed out in the order in which they become visible.
CREATE TABLE meta (
    id               integer PRIMARY KEY CHECK (id = 0),
    last_seq         bigint NOT NULL,
    last_accepted_ms bigint NOT NULL,
    log_bytes        bigint NOT NULL
);
INSERT INTO meta (id, last_seq, last_accepted_ms, log_bytes) VALUES (0, 0, 0, 0);

-- The outcome log. size is what the outcome counts for size retention (its bytes plus a fixed
-- overhead). The indexes are SQLite's, with the seq that SQLite keeps implicitly in every index
-- (the rowid) spelled out, so "the newest of ..." is one index seek here too.
CREATE TABLE outcomes (
    seq         bigint PRIMARY KEY,
    accepted_ms bigint NOT NULL,
    size        bigint NOT NULL,
    tenant      bytea NOT NULL,
    class       smallint NOT NULL,
    cn          bytea NOT NULL,
    an          bytea,
    si          bytea NOT NULL,
    tn          bytea,
    re          integer NOT NULL,
    ao          integer,
    dd          boolean NOT NULL,
    as_data     bytea,
    co          bytea,
    ba          bytea,
    bn          bytea,
    bt          bytea,
    dt          bytea NOT NULL
);
CREATE INDEX outcomes_by_si ON outcomes (tenant, cn, si, seq);
CREATE INDEX outcomes_by_tn ON outcomes (tenant, cn, tn, seq) WHERE tn IS NOT NULL;
CREATE INDEX outcomes_by_age ON outcomes (accepted_ms, seq);

-- Open call records, keyed by (tenant, si).
CREATE TABLE records (
    tenant        bytea NOT NULL,
    si            bytea NOT NULL,
    cn            bytea NOT NULL,
    tn            bytea,
    preview_agent bytea,
    agent         bytea,
    as_data       bytea,
    dt            bytea,
    state         smallint NOT NULL,
    created_ms    bigint NOT NULL,
    expires_ms    bigint,
    connected_ms  bigint,
    PRIMARY KEY (tenant, si)
);

-- Persisted transactions (EO with PS) and their durable cursors, keyed by (tenant, ps).
CREATE TABLE transactions (
    tenant      bytea NOT NULL,
    ps          bytea NOT NULL,
    request     bytea NOT NULL,
    cursor      bigint NOT NULL,
    released_ms bigint,
    PRIMARY KEY (tenant, ps)
);

-- Idempotency keys (XK), remembered in the transaction of their effect.
CREATE TABLE ingest_keys (
    tenant      bytea NOT NULL,
    key         bytea NOT NULL,
    accepted_ms bigint NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX ingest_keys_by_age ON ingest_keys (accepted_ms);

-- Every store that opens the database takes a node id from here.
CREATE SEQUENCE ozbus_node_ids;

-- One row per group commit attempt of a node (the latest few are kept): the first statement of
-- every group transaction inserts (node, k), so a group whose COMMIT went unanswered can be told
-- committed or not after a reconnect, and two attempts of one group can never both commit.
-- last_seq and accepted_ms say which sequence numbers a committed group took.
CREATE TABLE ozbus_commits (
    node        bigint NOT NULL,
    k           bigint NOT NULL,
    last_seq    bigint,
    accepted_ms bigint,
    PRIMARY KEY (node, k)
);

-- While the store is out of space: a node's probe writes a row here to learn whether there is
-- room again. EXTERNAL: stored uncompressed, so the probe needs the room it says it needs.
CREATE TABLE ozbus_probe (
    node bigint PRIMARY KEY,
    data bytea NOT NULL
);
ALTER TABLE ozbus_probe ALTER COLUMN data SET STORAGE EXTERNAL;
