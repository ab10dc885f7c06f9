//! Follower progress tracking (being written).
