//! The `fastcr` command line.
fn main() {}
