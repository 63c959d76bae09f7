-- ozbus store on PostgreSQL, schema version 5 (from version 4).
--
-- Transactions across nodes. A persisted transaction belongs to the node that last wrote it as
-- held (`transactions.node`, released_ms NULL): a node that re-issues one another node holds
-- takes it over with that write, and the node that held it is told at the commit, on the
-- channel every node listens on (`ozbus_log`), so that it ends its delivery there:
--     o <new owner> <tenant, hex> <ps, hex>
-- or, when the transaction was deleted (EE, the TTL) while held, with owner 0 (nobody). A
-- tenant and PS too long for a notification's payload are announced as `o <owner> *` (every
-- node checks every transaction it holds). The notification only wakes: a node reads the
-- owner from the table before it ends anything.

CREATE FUNCTION ozbus_owner_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t transactions%ROWTYPE;
    owner bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        t := OLD;
        owner := 0;
    ELSE
        t := NEW;
        owner := NEW.node;
    END IF;
    IF octet_length(t.tenant) + octet_length(t.ps) > 3000 THEN
        PERFORM pg_notify('ozbus_log', 'o ' || owner || ' *');
    ELSE
        PERFORM pg_notify('ozbus_log', 'o ' || owner || ' ' || encode(t.tenant, 'hex') || ' '
            || encode(t.ps, 'hex'));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_taken_over AFTER UPDATE ON transactions FOR EACH ROW
    WHEN (NEW.released_ms IS NULL AND OLD.node IS DISTINCT FROM NEW.node)
    EXECUTE FUNCTION ozbus_owner_changed();

CREATE TRIGGER transactions_ended AFTER DELETE ON transactions FOR EACH ROW
    WHEN (OLD.released_ms IS NULL)
    EXECUTE FUNCTION ozbus_owner_changed();

-- Whether node `n` is alive: its row is not stopped and was refreshed within `lease_ms` (by the
-- database's clock). A node without a row is not.
CREATE FUNCTION ozbus_node_alive(n bigint, lease_ms bigint) RETURNS boolean LANGUAGE sql
    AS 'SELECT EXISTS (SELECT 1 FROM nodes WHERE node = n AND NOT stopped
                       AND seen_ms >= ozbus_now_ms() - lease_ms)';

-- Transactions without PS, by TX: one row while a transaction is open on a node, so that the
-- other nodes refuse its TX (EC 809). Rows of nodes that are not alive count for nothing; the
-- nodes remove them (`node` is indexed for that).
CREATE TABLE active_transactions (
    tenant bytea NOT NULL,
    tx     bytea NOT NULL,
    node   bigint NOT NULL,
    PRIMARY KEY (tenant, tx)
);
CREATE INDEX active_transactions_by_node ON active_transactions (node);
