//! The in-memory model of the volumes an archive describes.
//!
//! Every safety decision of the extractor is taken here, before the filesystem is
//! touched: an entry is only created inside a directory this model knows to be a real
//! directory made earlier from the same archive, never under a symlink or a file, never
//! twice, never next to a name that differs only by case. The writer builds the same
//! model from the volume it scans, so a capture is refused (or a symlink skipped) by the
//! very rules that extraction applies.

use std::collections::HashMap;

use crate::limits::MAX_SYMLINK_HOPS;
use crate::names::fold;

pub(crate) type NodeId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
        }
    }
}

/// Metadata kept from a header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits only (setuid/setgid/sticky already dropped).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub parent: NodeId,
    pub kind: Kind,
    pub meta: Meta,
    pub name: Box<[u8]>,
    pub target: Option<Box<[u8]>>,
    children: Option<Box<DirIndex>>,
    /// A symlink the writer dropped (no longer in its directory's index).
    removed: bool,
}

#[derive(Debug, Default)]
struct DirIndex {
    exact: HashMap<Box<[u8]>, NodeId>,
    /// Folded names that differ from their exact name (see [`Tree::insert`]).
    folded: HashMap<Box<[u8]>, NodeId>,
}

/// Why a parent path cannot hold a new entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParentError {
    Missing,
    Symlink,
    NotDir,
}

/// Why a name cannot be added to a directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InsertError {
    Duplicate { existing: Kind },
    CaseCollision { existing: NodeId },
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Node(NodeId),
    /// A component the archive does not contain: assumed to be a plain directory, so that
    /// a dangling target is judged as if the app later created it.
    Virtual,
}

/// Volume roots and everything under them.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    symlinks: Vec<NodeId>,
    target_bytes: u64,
}

/// Components that symlink resolution may walk, in total, for one tree: a fixed
/// allowance plus one per byte of all symlink targets. Resolving a legitimate link walks
/// a handful of components; the budget keeps a hostile web of long, chained targets from
/// costing more than time linear in the archive's size.
pub(crate) struct Budget(u64);

impl Tree {
    pub(crate) fn new() -> Self {
        Tree::default()
    }

    /// Adds a volume root (its own parent).
    pub(crate) fn add_root(&mut self, meta: Meta) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node {
            parent: id,
            kind: Kind::Dir,
            meta,
            name: Box::default(),
            target: None,
            children: Some(Box::default()),
            removed: false,
        });
        id
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn child_exact(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.node(dir)
            .children
            .as_ref()
            .and_then(|c| c.exact.get(name).copied())
    }

    fn child_folded(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let c = self.node(dir).children.as_ref()?;
        let f = fold(name);
        c.exact
            .get(f.as_ref())
            .or_else(|| c.folded.get(f.as_ref()))
            .copied()
    }

    /// Walks `comps` from `root`; every component must be an existing directory.
    pub(crate) fn find_dir(&self, root: NodeId, comps: &[&[u8]]) -> Result<NodeId, ParentError> {
        let mut cur = root;
        for c in comps {
            let id = self.child_exact(cur, c).ok_or(ParentError::Missing)?;
            match self.node(id).kind {
                Kind::Dir => cur = id,
                Kind::Symlink => return Err(ParentError::Symlink),
                Kind::File => return Err(ParentError::NotDir),
            }
        }
        Ok(cur)
    }

    /// Adds `name` to directory `parent`, refusing an existing name or one that differs
    /// only by case from an existing name.
    pub(crate) fn insert(
        &mut self,
        parent: NodeId,
        name: &[u8],
        kind: Kind,
        meta: Meta,
        target: Option<&[u8]>,
    ) -> Result<NodeId, InsertError> {
        let id = self.nodes.len() as NodeId;
        let folded = fold(name);
        {
            let dir = self.nodes[parent as usize]
                .children
                .as_mut()
                .expect("parent is a directory");
            if let Some(&existing) = dir.exact.get(name) {
                return Err(InsertError::Duplicate {
                    existing: self.nodes[existing as usize].kind,
                });
            }
            // An earlier name M collides when fold(M) == fold(name). Either fold(M) == M,
            // and M is in `exact` under the folded key, or it is in `folded`.
            let clash = if folded.as_ref() != name {
                dir.exact.get(folded.as_ref())
            } else {
                None
            }
            .or_else(|| dir.folded.get(folded.as_ref()));
            if let Some(&existing) = clash {
                return Err(InsertError::CaseCollision { existing });
            }
            dir.exact.insert(name.into(), id);
            if folded.as_ref() != name {
                dir.folded.insert(folded.as_ref().into(), id);
            }
        }
        self.nodes.push(Node {
            parent,
            kind,
            meta,
            name: name.into(),
            target: target.map(Into::into),
            children: (kind == Kind::Dir).then(Box::default),
            removed: false,
        });
        if kind == Kind::Symlink {
            self.symlinks.push(id);
            self.target_bytes += target.map_or(0, |t| t.len() as u64);
        }
        Ok(id)
    }

    /// Removes a symlink leaf again (the writer drops symlinks that escape).
    pub(crate) fn remove_symlink(&mut self, id: NodeId) {
        let node = &self.nodes[id as usize];
        debug_assert_eq!(node.kind, Kind::Symlink);
        let (parent, name) = (node.parent, node.name.clone());
        let folded = fold(&name).into_owned();
        if let Some(dir) = self.nodes[parent as usize].children.as_mut() {
            dir.exact.remove(&name[..]);
            if folded[..] != name[..] {
                dir.folded.remove(&folded[..]);
            }
        }
        self.nodes[id as usize].removed = true;
    }

    /// The volume root a node belongs to.
    pub(crate) fn root_of(&self, mut id: NodeId) -> NodeId {
        while self.node(id).parent != id {
            id = self.node(id).parent;
        }
        id
    }

    /// Nodes from the root (exclusive) down to `id` (inclusive).
    pub(crate) fn chain(&self, mut id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        while self.node(id).parent != id {
            out.push(id);
            id = self.node(id).parent;
        }
        out.reverse();
        out
    }

    /// The path of a node below its volume root, for messages.
    pub(crate) fn path(&self, id: NodeId) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, n) in self.chain(id).into_iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(&self.node(n).name);
        }
        out
    }

    /// Symlinks currently in the tree, in insertion order.
    pub(crate) fn symlinks(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.symlinks
            .iter()
            .copied()
            .filter(|id| !self.node(*id).removed)
    }

    /// The resolution budget for checking every symlink of this tree once.
    pub(crate) fn symlink_budget(&self) -> Budget {
        Budget(1_000_000 + 2 * self.target_bytes)
    }

    /// Checks that one symlink, followed through every other symlink of the archive,
    /// stays inside its volume, both as the names are (case-sensitive filesystem) and
    /// with case folded (case-insensitive filesystem). A resolution that exhausts the
    /// budget is refused.
    pub(crate) fn check_symlink(
        &self,
        id: NodeId,
        budget: &mut Budget,
    ) -> Result<(), &'static str> {
        let node = self.node(id);
        let target = node.target.as_deref().expect("symlink has a target");
        let root = self.root_of(id);
        for folded in [false, true] {
            let mut stack: Vec<Step> = self
                .chain(node.parent)
                .into_iter()
                .map(Step::Node)
                .collect();
            let mut hops = 0;
            self.walk(&mut stack, root, target, &mut hops, folded, budget)?;
        }
        Ok(())
    }

    fn walk(
        &self,
        stack: &mut Vec<Step>,
        root: NodeId,
        target: &[u8],
        hops: &mut u32,
        folded: bool,
        budget: &mut Budget,
    ) -> Result<(), &'static str> {
        if target.first() == Some(&b'/') {
            return Err("absolute target");
        }
        for c in target.split(|b| *b == b'/') {
            budget.0 = budget
                .0
                .checked_sub(1)
                .ok_or("symlink resolution too costly (too many chained components)")?;
            match c {
                b"" | b"." => {}
                b".." => {
                    if stack.pop().is_none() {
                        return Err("target resolves outside the volume");
                    }
                }
                name => {
                    let dir = match stack.last() {
                        None => Some(root),
                        Some(Step::Node(n)) => Some(*n),
                        Some(Step::Virtual) => None,
                    };
                    let child = dir.and_then(|d| {
                        if folded {
                            self.child_folded(d, name)
                        } else {
                            self.child_exact(d, name)
                        }
                    });
                    match child {
                        None => stack.push(Step::Virtual),
                        Some(ch) => match self.node(ch).kind {
                            // A file followed by more components cannot be resolved by
                            // the kernel; `child_*` of a file is None, so any further
                            // component is judged lexically (as if it became a directory).
                            Kind::Dir | Kind::File => stack.push(Step::Node(ch)),
                            Kind::Symlink => {
                                *hops += 1;
                                if *hops > MAX_SYMLINK_HOPS {
                                    return Err("too many levels of symbolic links");
                                }
                                let t = self.node(ch).target.as_deref().expect("target");
                                self.walk(stack, root, t, hops, folded, budget)?;
                            }
                        },
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&str, Option<&str>)]) -> (Tree, Vec<NodeId>) {
        let mut t = Tree::new();
        let root = t.add_root(Meta::default());
        let mut ids = Vec::new();
        for (path, target) in entries {
            let comps: Vec<&[u8]> = path.as_bytes().split(|b| *b == b'/').collect();
            let (last, parents) = comps.split_last().unwrap();
            let parent = t.find_dir(root, parents).unwrap();
            let kind = match target {
                None if path.ends_with("_f") => Kind::File,
                None => Kind::Dir,
                Some(_) => Kind::Symlink,
            };
            ids.push(
                t.insert(
                    parent,
                    last,
                    kind,
                    Meta::default(),
                    target.map(str::as_bytes),
                )
                .unwrap(),
            );
        }
        (t, ids)
    }

    impl Tree {
        fn check_symlink_b(&self, id: NodeId) -> Result<(), &'static str> {
            self.check_symlink(id, &mut self.symlink_budget())
        }
    }

    #[test]
    fn budget_bounds_the_work() {
        let (t, ids) = build(&[
            ("d", None),
            ("a", Some("d/../d/../d/../d")),
            ("b", Some("a/a")),
        ]);
        assert!(t.check_symlink(ids[2], &mut Budget(100)).is_ok());
        assert!(t.check_symlink(ids[2], &mut Budget(5)).is_err());
    }

    #[test]
    fn chains_that_escape_only_through_another_link() {
        // s -> "." ; x/y/z -> "../../s/.." : lexically inside, really the volume's parent.
        let (t, ids) = build(&[
            ("s", Some(".")),
            ("x", None),
            ("x/y", None),
            ("x/y/z", Some("../../s/..")),
        ]);
        assert!(t.check_symlink_b(ids[0]).is_ok());
        assert_eq!(
            t.check_symlink_b(ids[3]),
            Err("target resolves outside the volume")
        );
    }

    #[test]
    fn inside_chains_and_loops() {
        let (t, ids) = build(&[
            ("d", None),
            ("d/e", None),
            ("a", Some("d/e")),
            ("b", Some("a/../x_f")),
            ("l1", Some("l2")),
            ("l2", Some("l1")),
            ("f_f", None),
            ("g", Some("f_f/../..")),
            ("n", Some("missing/../..")),
        ]);
        assert!(t.check_symlink_b(ids[2]).is_ok());
        // a -> d/e, so a/.. is d: inside.
        assert!(t.check_symlink_b(ids[3]).is_ok());
        assert_eq!(
            t.check_symlink_b(ids[4]),
            Err("too many levels of symbolic links")
        );
        assert!(t.check_symlink_b(ids[7]).is_err());
        assert!(t.check_symlink_b(ids[8]).is_err());
    }

    #[test]
    fn case_insensitive_resolution_is_checked_too() {
        // On a case-insensitive filesystem "S" is the symlink "s" -> ".", so "S/.."
        // leaves the volume; on a case-sensitive one it is a missing directory.
        let (t, ids) = build(&[("s", Some(".")), ("q", Some("S/.."))]);
        assert!(t.check_symlink_b(ids[1]).is_err());
    }

    #[test]
    fn duplicates_and_case() {
        let mut t = Tree::new();
        let root = t.add_root(Meta::default());
        t.insert(root, b"ReadMe", Kind::File, Meta::default(), None)
            .unwrap();
        assert_eq!(
            t.insert(root, b"ReadMe", Kind::Dir, Meta::default(), None),
            Err(InsertError::Duplicate {
                existing: Kind::File
            })
        );
        assert!(matches!(
            t.insert(root, b"readme", Kind::File, Meta::default(), None),
            Err(InsertError::CaseCollision { .. })
        ));
        assert!(matches!(
            t.insert(root, b"README", Kind::File, Meta::default(), None),
            Err(InsertError::CaseCollision { .. })
        ));
        t.insert(root, b"other", Kind::File, Meta::default(), None)
            .unwrap();
        assert!(matches!(
            t.insert(root, b"OTHER", Kind::File, Meta::default(), None),
            Err(InsertError::CaseCollision { .. })
        ));
        assert_eq!(t.find_dir(root, &[b"ReadMe"]), Err(ParentError::NotDir));
        assert_eq!(t.find_dir(root, &[b"nope"]), Err(ParentError::Missing));
    }
}
