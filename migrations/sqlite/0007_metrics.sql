-- How many sessions have ended, by reason, since this database was created: written in the
-- transaction that ends them, so every instance reports the same, complete count.
CREATE TABLE session_end_counts (
    reason TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) STRICT;
