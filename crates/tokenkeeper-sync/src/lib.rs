//! tokenkeeper-sync (under construction).
