//! Polis node library.
