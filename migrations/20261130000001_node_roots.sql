-- Each node's workers publish the directories the volume rules depend on, so the API
-- refuses at registration exactly what the node's worker would refuse at pre-flight.
-- Written at worker start (canonical absolute paths); the last writer wins.
CREATE TABLE node_roots (
    node           text PRIMARY KEY CHECK (length(node) BETWEEN 1 AND 253),
    volumes_root   text NOT NULL CHECK (volumes_root LIKE '/%'),
    -- empty: absolute volumes are refused on this node
    absolute_roots text[] NOT NULL DEFAULT '{}',
    state_dir      text NOT NULL CHECK (state_dir LIKE '/%'),
    snapshot_dir   text NOT NULL CHECK (snapshot_dir LIKE '/%'),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
