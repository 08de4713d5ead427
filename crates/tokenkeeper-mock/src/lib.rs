//! tokenkeeper-mock (under construction).
