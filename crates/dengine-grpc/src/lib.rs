//! # dengine-grpc: the gRPC server
//!
//! **Status: planned.** This crate is a placeholder; it contains no code yet.
//! Its implementation is tracked by the gRPC server issue.
//!
//! ## Place in the workspace
//!
//! It sits on top of `dengine-core` and below the `dengine` facade:
//!
//! ```text
//! dengine-core  <-  dengine-grpc  <-  dengine
//! ```
//!
//! It will hold dengine's gRPC server, serving a key-value API compatible
//! with etcd v3 on top of the replicated log.
#![deny(missing_docs)]
