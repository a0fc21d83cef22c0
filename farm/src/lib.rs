//! Simulated proxy farm: real TCP servers with controlled behaviour and a list server that
//! serves their candidate lines, for the CLI's `demo` and `farm` commands, the tests and the bench.

pub mod lists;
pub mod sim;
