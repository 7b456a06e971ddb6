//! Tree paths: every actor has one (`/`, `/cluster/consensus`); logs, metrics and fault injection
//! name actors by it.

use std::fmt;
use std::sync::Arc;

/// The place of an actor in the supervision tree. Cheap to clone; ordered so that a parent sorts
/// before its children.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorPath(Arc<str>);

impl ActorPath {
    /// The root supervisor's path, `/`.
    pub fn root() -> Self {
        ActorPath(Arc::from("/"))
    }

    /// The path of a child called `name` below this one.
    pub fn child(&self, name: &str) -> Self {
        if self.is_root() {
            ActorPath(Arc::from(format!("/{name}")))
        } else {
            ActorPath(Arc::from(format!("{}/{name}", self.0)))
        }
    }

    /// Whether this is the root path.
    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl serde::Serialize for ActorPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl From<&str> for ActorPath {
    fn from(s: &str) -> Self {
        ActorPath(Arc::from(s))
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
    }
}
