//! tokenkeeper-keeper (under construction).
