//! tokenkeeper-provider (under construction).
