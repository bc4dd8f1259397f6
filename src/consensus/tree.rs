//! The tree of uncommitted blocks, rooted at the highest committed block, plus a bounded pool of
//! blocks whose parent has not arrived yet.

use std::collections::HashMap;
use std::sync::Arc;

use super::messages::Block;
use crate::types::{BlockId, Height, Round};

/// Most uncommitted blocks held (a bound against a flood of forks).
pub const MAX_TREE_BLOCKS: usize = 4096;
/// Most blocks held while their parent is fetched.
pub const MAX_ORPHAN_BLOCKS: usize = 1024;

/// The committed root of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Its id.
    pub id: BlockId,
    /// Its height.
    pub height: Height,
    /// Its round.
    pub round: Round,
}

/// Uncommitted blocks descending from the committed root.
#[derive(Debug)]
pub struct BlockTree {
    root: Root,
    blocks: HashMap<BlockId, Arc<Block>>,
    /// Orphans by their parent's id.
    orphans: HashMap<BlockId, Vec<(BlockId, Arc<Block>)>>,
    orphan_count: usize,
}

/// What happened to an inserted block.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    /// Now in the tree (with these orphans connected after it, parents first).
    Added(Vec<BlockId>),
    /// Already known.
    Known,
    /// At or below the committed height: irrelevant.
    Stale,
    /// Parent unknown: kept as an orphan (or dropped if the pool is full).
    Orphan,
    /// The tree is full.
    Full,
}

impl BlockTree {
    /// A tree holding only its root.
    pub fn new(root: Root) -> Self {
        Self {
            root,
            blocks: HashMap::new(),
            orphans: HashMap::new(),
            orphan_count: 0,
        }
    }

    /// The committed root.
    pub fn root(&self) -> Root {
        self.root
    }

    /// A block of the tree (not the root, which is committed).
    pub fn block(&self, id: &BlockId) -> Option<&Arc<Block>> {
        self.blocks.get(id)
    }

    /// True for the root and every tree block.
    pub fn contains(&self, id: &BlockId) -> bool {
        *id == self.root.id || self.blocks.contains_key(id)
    }

    /// Number of uncommitted blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True if only the root is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Inserts a checked block with its id; connects waiting orphans.
    pub fn insert(&mut self, id: BlockId, block: Arc<Block>) -> Insert {
        if block.height <= self.root.height {
            return Insert::Stale;
        }
        if self.blocks.contains_key(&id) {
            return Insert::Known;
        }
        if !self.contains(&block.parent_id) || !self.parent_fits(&block) {
            if self.orphan_count < MAX_ORPHAN_BLOCKS {
                let list = self.orphans.entry(block.parent_id).or_default();
                if !list.iter().any(|(oid, _)| *oid == id) {
                    list.push((id, block));
                    self.orphan_count += 1;
                }
            }
            return Insert::Orphan;
        }
        if self.blocks.len() >= MAX_TREE_BLOCKS {
            return Insert::Full;
        }
        self.blocks.insert(id, block);
        let mut added = vec![id];
        let mut i = 0;
        while i < added.len() {
            let parent = added[i];
            if let Some(children) = self.orphans.remove(&parent) {
                self.orphan_count -= children.len();
                for (cid, child) in children {
                    if self.blocks.len() < MAX_TREE_BLOCKS && self.parent_fits(&child) {
                        self.blocks.insert(cid, child);
                        added.push(cid);
                    }
                }
            }
            i += 1;
        }
        Insert::Added(added)
    }

    fn parent_fits(&self, block: &Block) -> bool {
        if block.parent_id == self.root.id {
            return block.height == self.root.height.next() && block.round > self.root.round;
        }
        match self.blocks.get(&block.parent_id) {
            Some(p) => block.height == p.height.next() && block.round > p.round,
            None => false,
        }
    }

    /// Is there an orphan with this id (so we hold it but not its ancestors)?
    pub fn orphan_parent_of(&self, id: &BlockId) -> Option<(BlockId, Height)> {
        self.orphans.iter().find_map(|(parent, list)| {
            list.iter()
                .find(|(oid, _)| oid == id)
                .map(|(_, b)| (*parent, b.height))
        })
    }

    /// The blocks from just above the root up to `id`, oldest first. `None` if `id` is not in the tree.
    pub fn path_from_root(&self, id: &BlockId) -> Option<Vec<Arc<Block>>> {
        let mut path = Vec::new();
        let mut cur = *id;
        while cur != self.root.id {
            let b = self.blocks.get(&cur)?;
            cur = b.parent_id;
            path.push(Arc::clone(b));
        }
        path.reverse();
        Some(path)
    }

    /// Makes `new_root` (a tree block) the root and drops every block that does not descend from it,
    /// and every orphan at or below its height.
    pub fn prune(&mut self, new_root: Root) {
        self.root = new_root;
        let mut by_height: Vec<(BlockId, Arc<Block>)> = self.blocks.drain().collect();
        by_height.sort_by_key(|(_, b)| b.height);
        for (id, b) in by_height {
            if b.height > new_root.height && self.contains(&b.parent_id) {
                self.blocks.insert(id, b);
            }
        }
        let h = new_root.height;
        self.orphans.retain(|_, list| {
            list.retain(|(_, b)| b.height > h);
            !list.is_empty()
        });
        self.orphan_count = self.orphans.values().map(Vec::len).sum();
    }
}
