//! Membership change validation (being written).
