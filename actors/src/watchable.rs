//! [`Watchable`]: a value with subscriptions that outlives the actors publishing it. A subscriber
//! gets the current value at once and every change after, across restarts of the publisher
//! (the value lives with the tree's specs, not inside an incarnation).

use std::sync::Arc;

use tokio::sync::watch;

/// A shared, observable value. Clone it to hand it to a publisher and to subscribers.
#[derive(Debug)]
pub struct Watchable<T> {
    sender: Arc<watch::Sender<T>>,
}

impl<T> Clone for Watchable<T> {
    fn clone(&self) -> Self {
        Watchable {
            sender: self.sender.clone(),
        }
    }
}

impl<T: Clone + PartialEq> Watchable<T> {
    /// A value starting at `initial`.
    pub fn new(initial: T) -> Self {
        Watchable {
            sender: Arc::new(watch::channel(initial).0),
        }
    }

    /// Publish `value`; subscribers are woken only if it differs from the current one.
    pub fn set(&self, value: T) {
        self.sender.send_if_modified(|current| {
            if *current == value {
                return false;
            }
            *current = value;
            true
        });
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.sender.borrow().clone()
    }

    /// A receiver that sees the current value and every later change.
    pub fn subscribe(&self) -> watch::Receiver<T> {
        let mut rx = self.sender.subscribe();
        rx.mark_changed();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_the_current_value_then_only_real_changes() {
        let w = Watchable::new(1);
        let mut rx = w.subscribe();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
        w.set(1);
        assert!(!rx.has_changed().unwrap(), "an equal value is not a change");
        w.set(2);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(w.get(), 2);
    }
}
