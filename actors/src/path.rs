//! Tree paths: every actor has one (`/`, `/cluster/consensus`); logs, metrics and fault injection
//! name actors by it.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// The place of an actor in the supervision tree. Ordered so that a parent sorts before its
/// children. Paths are interned, each distinct one kept once for the life of the process (a node
/// has a few dozen, fixed by its tree), so a copy touches no reference count: every message
/// carries its actor's path for the caller's error (issue 12). Only the tree makes paths; a
/// lookup by text ([`Borrow<str>`]) interns nothing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorPath(&'static str);

impl ActorPath {
    /// The root supervisor's path, `/`.
    pub fn root() -> Self {
        ActorPath("/")
    }

    /// The path of a child called `name` below this one.
    pub fn child(&self, name: &str) -> Self {
        if self.is_root() {
            ActorPath::from(format!("/{name}").as_str())
        } else {
            ActorPath::from(format!("{}/{name}", self.0).as_str())
        }
    }

    /// Whether this is the root path.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        self.0
    }
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for ActorPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl Borrow<str> for ActorPath {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl From<&str> for ActorPath {
    /// The path `s`, interned: kept for the life of the process the first time it is seen.
    fn from(s: &str) -> Self {
        static PATHS: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
        let mut paths = PATHS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(&kept) = paths.get(s) {
            return ActorPath(kept);
        }
        let kept: &'static str = Box::leak(Box::from(s));
        paths.insert(kept);
        ActorPath(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_root_and_below() {
        let core = ActorPath::root().child("core");
        assert_eq!(core.as_str(), "/core");
        assert_eq!(core.child("tpm").as_str(), "/core/tpm");
        assert!(ActorPath::root().is_root());
        assert!(!core.is_root());
        assert!(ActorPath::root() < core);
        assert!(
            std::ptr::eq(core.as_str(), ActorPath::from("/core").as_str()),
            "one copy of each path is kept"
        );
    }
}
