-- ozbus store on PostgreSQL: the call book's lease and the cluster's secret.
--
-- Nothing here reads or changes a table of an earlier version, so this step applies after any
-- of them (see MIGRATIONS in schema.rs for the version it brings the database to).

-- Who holds the call book (see book.rs). One row. The node holding the session-level advisory
-- lock BOOK_LOCK takes the book by raising epoch (so every holder has an epoch of its own, and
-- epochs only grow) and naming itself and the address at which it takes reports from its
-- peers; node and addr are NULL while the book was let go and nobody took it yet.
CREATE TABLE book_lease (
    id    integer PRIMARY KEY CHECK (id = 0),
    epoch bigint NOT NULL,
    node  bigint,
    addr  text
);
INSERT INTO book_lease (id, epoch) VALUES (0, 0);

-- What a node presents to the book's holder to forward reports: 32 random bytes from the
-- server's strong random source (gen_random_uuid: 122 random bits each), in hex, made once with
-- the database.
CREATE TABLE ozbus_cluster (
    id     integer PRIMARY KEY CHECK (id = 0),
    secret text NOT NULL CHECK (secret ~ '^[0-9a-f]{64}$')
);
INSERT INTO ozbus_cluster (id, secret) VALUES (0,
    replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''));

-- The first statement of a group transaction that writes the book, after the group claimed its
-- number: passes only while `held` is the book's epoch, and then keeps the row from changing
-- (FOR SHARE) until the transaction ends. A new holder's UPDATE of the row therefore waits for
-- every group of the old holder that passed, and every group that comes later finds the new
-- epoch and fails with SQLSTATE OZ001 (class OZ: ozbus's own), so that the whole transaction
-- rolls back.
CREATE FUNCTION ozbus_book_fence(held bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM book_lease WHERE id = 0 AND epoch = held FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this node no longer holds the call book (epoch %)', held
            USING ERRCODE = 'OZ001';
    END IF;
END
$$;
