//! `bellhop-loadgen`: see docs/BENCHMARKS.md.

fn main() {}
