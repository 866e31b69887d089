//! What each node's workers publish about themselves for the API's benefit: the
//! directories the volume rules depend on ([`NodeRoots`]), and the per-node lock that
//! serialises workload writes on one node (so two registrations cannot both pass the
//! overlap check).

use std::path::PathBuf;

use sqlx::{PgConnection, PgExecutor};

use crate::volume::NodeRoots;

/// Advisory-lock class of the per-node workload-write lock (`"vond"`); distinct from the
/// queue's workload lock class.
pub const NODE_LOCK_CLASS: i32 = 0x766f_6e64;

#[derive(sqlx::FromRow)]
struct Row {
    volumes_root: String,
    absolute_roots: Vec<String>,
    state_dir: String,
    snapshot_dir: String,
}

impl From<Row> for NodeRoots {
    fn from(r: Row) -> NodeRoots {
        NodeRoots {
            volumes_root: r.volumes_root.into(),
            absolute_roots: r.absolute_roots.into_iter().map(PathBuf::from).collect(),
            state_dir: r.state_dir.into(),
            snapshot_dir: r.snapshot_dir.into(),
        }
    }
}

/// A path as stored: the worker refuses non-UTF-8 roots at start.
fn text(p: &std::path::Path) -> Result<String, sqlx::Error> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| sqlx::Error::Encode(format!("{} is not UTF-8", p.display()).into()))
}

/// Publish this node's roots; returns what was published before (if anything), so the
/// worker can warn when workers of one node disagree.
pub async fn publish_roots(
    exec: impl PgExecutor<'_>,
    node: &str,
    roots: &NodeRoots,
) -> Result<Option<NodeRoots>, sqlx::Error> {
    let abs = roots
        .absolute_roots
        .iter()
        .map(|p| text(p))
        .collect::<Result<Vec<_>, _>>()?;
    let previous: Option<Row> = sqlx::query_as(
        "WITH old AS (SELECT volumes_root, absolute_roots, state_dir, snapshot_dir \
                      FROM node_roots WHERE node = $1), \
              new AS (INSERT INTO node_roots (node, volumes_root, absolute_roots, state_dir, snapshot_dir) \
                      VALUES ($1, $2, $3, $4, $5) \
                      ON CONFLICT (node) DO UPDATE SET volumes_root = EXCLUDED.volumes_root, \
                        absolute_roots = EXCLUDED.absolute_roots, state_dir = EXCLUDED.state_dir, \
                        snapshot_dir = EXCLUDED.snapshot_dir, updated_at = now()) \
         SELECT * FROM old",
    )
    .bind(node)
    .bind(text(&roots.volumes_root)?)
    .bind(abs)
    .bind(text(&roots.state_dir)?)
    .bind(text(&roots.snapshot_dir)?)
    .fetch_optional(exec)
    .await?;
    Ok(previous.map(NodeRoots::from))
}

/// The roots a node's worker published, if any.
pub async fn roots(
    exec: impl PgExecutor<'_>,
    node: &str,
) -> Result<Option<NodeRoots>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT volumes_root, absolute_roots, state_dir, snapshot_dir FROM node_roots WHERE node = $1",
    )
    .bind(node)
    .fetch_optional(exec)
    .await?;
    Ok(row.map(NodeRoots::from))
}

/// Serialise workload writes on `node` until the caller's transaction ends.
pub async fn lock_for_workload_write(
    conn: &mut PgConnection,
    node: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(NODE_LOCK_CLASS)
        .bind(node)
        .execute(conn)
        .await?;
    Ok(())
}
