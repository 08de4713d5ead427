//! Test support: the keeper over the mock provider, from the crate's `testing` feature.

pub use tokenkeeper_keeper::testing::*;
