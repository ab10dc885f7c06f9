//! dengine-storage-rocksdb
