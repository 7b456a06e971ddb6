//! A bound on the Watch streams one node holds open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::curator::CuratorError;

/// How many Watch streams one node may hold open at once: a node needs one, a few more cover
/// reconnects the Curator has not noticed yet; no node can make a Curator hold unbounded state.
pub const MAX_WATCHES_PER_NODE: usize = 4;

/// Open Watch streams per node ID.
#[derive(Clone, Default)]
pub(super) struct WatchSlots(Arc<Mutex<HashMap<String, usize>>>);

/// One node's claim on a Watch stream, given back when dropped.
pub(super) struct WatchSlot {
    slots: WatchSlots,
    id: String,
}

impl WatchSlots {
    /// A slot for node `id`, unless it holds [`MAX_WATCHES_PER_NODE`] already.
    pub(super) fn claim(&self, id: &str) -> Result<WatchSlot, CuratorError> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(id.to_owned()).or_default();
        if *count >= MAX_WATCHES_PER_NODE {
            return Err(CuratorError::TooManyWatches(id.to_owned()));
        }
        *count += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.id);
            }
        }
    }
}
