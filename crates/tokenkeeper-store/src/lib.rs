//! tokenkeeper-store (under construction).
