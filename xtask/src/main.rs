//! `cargo xtask`: setup, build, run, test, bench.
fn main() {}
