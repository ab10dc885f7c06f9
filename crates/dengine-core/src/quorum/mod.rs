//! Quorum arithmetic (being written).
