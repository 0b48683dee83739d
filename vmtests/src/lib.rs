//! Harness for the privileged end-to-end tests (root, BPF, userfaultfd).
