//! dengine-storage-sled
