//! dengine
