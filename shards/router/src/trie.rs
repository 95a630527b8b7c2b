//! Arena trie over topic levels, shared by the wildcard-subscription index and the retained index.
//!
//! Nodes live in one `Vec` and refer to each other by `u32` index: no per-node allocation for
//! the node itself, no recursive `Drop` (a 100,000-level filter is just 100,000 slots), and
//! removal can prune bottom-up from a recorded path without parent pointers.

use std::collections::HashMap;

pub(crate) const ROOT: u32 = 0;
pub(crate) const NIL: u32 = u32::MAX;

/// Up to this many children are kept in a vector and scanned linearly: most interior nodes of a
/// filter trie have one or two children, and a `Vec` entry costs 24 bytes vs ~50 for a map.
const SMALL_MAX: usize = 8;

/// Literal children of a node, keyed by level text.
pub(crate) enum Children {
    Small(Vec<(Box<str>, u32)>),
    // Boxed on purpose: keeps `Children` at 24 bytes (a bare `HashMap` is 48).
    #[allow(clippy::box_collection)]
    Map(Box<HashMap<Box<str>, u32>>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Small(Vec::new())
    }
}

impl Children {
    #[inline]
    pub(crate) fn get(&self, label: &str) -> Option<u32> {
        match self {
            Children::Small(v) => v.iter().find(|(l, _)| &**l == label).map(|&(_, id)| id),
            Children::Map(m) => m.get(label).copied(),
        }
    }

    /// `label` must be absent.
    fn insert(&mut self, label: &str, id: u32) {
        match self {
            Children::Small(v) if v.len() < SMALL_MAX => {
                // Grow 1, 2, 4, 8 rather than Vec's default 4, 8: most nodes have one child.
                if v.len() == v.capacity() {
                    v.reserve_exact(v.len().max(1));
                }
                v.push((label.into(), id));
            }
            Children::Small(v) => {
                let mut m: HashMap<Box<str>, u32> = std::mem::take(v).into_iter().collect();
                m.insert(label.into(), id);
                *self = Children::Map(Box::new(m));
            }
            Children::Map(m) => {
                m.insert(label.into(), id);
            }
        }
    }

    fn remove(&mut self, label: &str) {
        match self {
            Children::Small(v) => {
                if let Some(i) = v.iter().position(|(l, _)| &**l == label) {
                    v.swap_remove(i);
                }
                if v.is_empty() {
                    *v = Vec::new();
                }
            }
            Children::Map(m) => {
                m.remove(label);
                if m.len() <= SMALL_MAX / 2 {
                    let v = std::mem::take(&mut **m).into_iter().collect();
                    *self = Children::Small(v);
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Children::Small(v) => v.is_empty(),
            Children::Map(m) => m.is_empty(),
        }
    }

    /// Visits every child; labels borrow from the trie so callers can stack them.
    #[inline]
    pub(crate) fn for_each<'a>(&'a self, mut f: impl FnMut(&'a str, u32)) {
        match self {
            Children::Small(v) => v.iter().for_each(|(l, id)| f(l, *id)),
            Children::Map(m) => m.iter().for_each(|(l, id)| f(l, *id)),
        }
    }
}

/// What a node stores besides its edges; `is_empty` decides pruning.
pub(crate) trait Payload: Default {
    fn is_empty(&self) -> bool;
}

impl Payload for bool {
    fn is_empty(&self) -> bool {
        !*self
    }
}

pub(crate) struct Node<P> {
    pub(crate) children: Children,
    /// The '+' child, or `NIL`. Kept out of `children` so matching needs no string compare.
    pub(crate) plus: u32,
    pub(crate) data: P,
}

impl<P: Default> Default for Node<P> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: NIL,
            data: P::default(),
        }
    }
}

impl<P: Payload> Node<P> {
    fn is_prunable(&self) -> bool {
        self.children.is_empty() && self.plus == NIL && self.data.is_empty()
    }
}

/// One step down the trie.
#[derive(Clone, Copy)]
pub(crate) enum Edge<'a> {
    Plus,
    Lit(&'a str),
}

pub(crate) struct Trie<P> {
    nodes: Vec<Node<P>>,
    free: Vec<u32>,
}

impl<P: Payload> Default for Trie<P> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }
}

impl<P: Payload> Trie<P> {
    #[inline]
    pub(crate) fn node(&self, id: u32) -> &Node<P> {
        &self.nodes[id as usize]
    }

    #[inline]
    pub(crate) fn node_mut(&mut self, id: u32) -> &mut Node<P> {
        &mut self.nodes[id as usize]
    }

    /// Live nodes, excluding the root.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }

    /// True if the root has nothing below or on it: matching can be skipped entirely.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[ROOT as usize].is_prunable()
    }

    #[inline]
    fn child(&self, id: u32, edge: Edge<'_>) -> Option<u32> {
        let n = self.node(id);
        match edge {
            Edge::Plus => (n.plus != NIL).then_some(n.plus),
            Edge::Lit(l) => n.children.get(l),
        }
    }

    pub(crate) fn find<'e>(&self, edges: impl Iterator<Item = Edge<'e>>) -> Option<u32> {
        let mut id = ROOT;
        for e in edges {
            id = self.child(id, e)?;
        }
        Some(id)
    }

    pub(crate) fn find_or_create<'e>(&mut self, edges: impl Iterator<Item = Edge<'e>>) -> u32 {
        let mut id = ROOT;
        for e in edges {
            id = match self.child(id, e) {
                Some(c) => c,
                None => {
                    let c = self.alloc();
                    let n = self.node_mut(id);
                    match e {
                        Edge::Plus => n.plus = c,
                        Edge::Lit(l) => n.children.insert(l, c),
                    }
                    c
                }
            };
        }
        id
    }

    fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        let id = u32::try_from(self.nodes.len()).ok().filter(|&id| id != NIL);
        let id = id.expect("trie exceeds u32::MAX nodes");
        self.nodes.push(Node::default());
        id
    }

    /// Applies `f` to the payload at the end of `edges` (if that node exists), then frees the
    /// nodes that became empty, bottom-up. Iterative: the path is recorded on the heap.
    pub(crate) fn remove_with<'e, R>(
        &mut self,
        edges: impl Iterator<Item = Edge<'e>>,
        f: impl FnOnce(&mut P) -> Option<R>,
    ) -> Option<R> {
        let mut path: Vec<(u32, Edge<'e>)> = Vec::new();
        let mut id = ROOT;
        for e in edges {
            let c = self.child(id, e)?;
            path.push((id, e));
            id = c;
        }
        let r = f(&mut self.node_mut(id).data)?;
        while let Some((parent, edge)) = path.pop() {
            if !self.node(id).is_prunable() {
                break;
            }
            let p = self.node_mut(parent);
            match edge {
                Edge::Plus => p.plus = NIL,
                Edge::Lit(l) => p.children.remove(l),
            }
            self.free.push(id);
            id = parent;
        }
        if self.node_count() == 0 {
            // Everything below the root is gone: give the arena's memory back.
            self.nodes.truncate(1);
            self.nodes.shrink_to_fit();
            self.free = Vec::new();
        }
        Some(r)
    }
}

/// Shrinks a map after mass removal (e.g. a fleet disconnecting) so memory follows the live
/// size. Shrinking to 2x only when 4x sparse keeps the cost amortised O(1) per removal.
pub(crate) fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
    let cap = m.capacity();
    if m.is_empty() {
        if cap > 0 {
            m.shrink_to_fit();
        }
    } else if cap > 64 && m.len() * 4 < cap {
        m.shrink_to(m.len() * 2);
    }
}
