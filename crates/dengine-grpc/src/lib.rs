//! dengine-grpc
