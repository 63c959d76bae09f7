-- ozbus store, schema version 2 (from version 1).
--
-- A UO that names its call by TN looks for the number dialled. An outcome keeps a TN of its own
-- only when it differs from SI (OZ carries TN only then), so a call whose SI defaulted to its TN
-- stores the number in si alone. The lookup by number is therefore on coalesce(tn, si): tn when
-- the outcome has one, else si. This index makes it one seek, like the lookup by SI (the rowid,
-- seq, is the implicit last column, so "ORDER BY seq DESC LIMIT 1" reads one entry). For an
-- outcome with a TN its key is the one outcomes_by_tn had, so that index goes. Building the new
-- one reads the whole log once, at the first start of this version.
DROP INDEX outcomes_by_tn;
CREATE INDEX outcomes_by_number ON outcomes (tenant, cn, coalesce(tn, si));
