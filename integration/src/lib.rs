//! Harness for multi-node and VM tests of Polis; the cluster tests arrive with the lifecycle.
