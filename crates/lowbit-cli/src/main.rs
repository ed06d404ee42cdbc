//! lowbit CLI
fn main() {}
