-- ozbus store, schema version 1.
-- Values from SDMP are BLOBs: byte-exact, not necessarily UTF-8.

-- One row. last_seq is the high-water mark of the log: sequence numbers are never reused, also
-- after retention removed every outcome, so it cannot be derived from max(seq).
CREATE TABLE meta (
    id               INTEGER PRIMARY KEY CHECK (id = 0),
    last_seq         INTEGER NOT NULL,
    last_accepted_ms INTEGER NOT NULL,
    log_bytes        INTEGER NOT NULL
);
INSERT INTO meta (id, last_seq, last_accepted_ms, log_bytes) VALUES (0, 0, 0, 0);

-- The outcome log. seq is the rowid, so reading "after a position" is a b-tree range scan.
-- size is what the outcome counts for size retention (its bytes plus a fixed overhead).
CREATE TABLE outcomes (
    seq         INTEGER PRIMARY KEY,
    accepted_ms INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    tenant      BLOB NOT NULL,
    class       INTEGER NOT NULL,
    cn          BLOB NOT NULL,
    an          BLOB,
    si          BLOB NOT NULL,
    tn          BLOB,
    re          INTEGER NOT NULL,
    ao          INTEGER,
    dd          INTEGER NOT NULL,
    as_data     BLOB,
    co          BLOB,
    ba          BLOB,
    bn          BLOB,
    bt          BLOB,
    dt          BLOB NOT NULL
);
-- latest_outcome: the rowid (seq) is the implicit last column, so "ORDER BY seq DESC LIMIT 1"
-- is one index seek.
CREATE INDEX outcomes_by_si ON outcomes (tenant, cn, si);
CREATE INDEX outcomes_by_tn ON outcomes (tenant, cn, tn) WHERE tn IS NOT NULL;
-- Age retention: finds the newest outcome older than the cut-off in one seek.
CREATE INDEX outcomes_by_age ON outcomes (accepted_ms);

-- Open call records, keyed by (tenant, si). A rowid table because dt can be large.
CREATE TABLE records (
    tenant        BLOB NOT NULL,
    si            BLOB NOT NULL,
    cn            BLOB NOT NULL,
    tn            BLOB,
    preview_agent BLOB,
    agent         BLOB,
    as_data       BLOB,
    dt            BLOB,
    state         INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER,
    connected_ms  INTEGER,
    UNIQUE (tenant, si)
);

-- Persisted transactions (EO with PS) and their durable cursors, keyed by (tenant, ps).
CREATE TABLE transactions (
    tenant      BLOB NOT NULL,
    ps          BLOB NOT NULL,
    request     BLOB NOT NULL,
    cursor      INTEGER NOT NULL,
    released_ms INTEGER,
    UNIQUE (tenant, ps)
);
