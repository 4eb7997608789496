//! Response cache: pingora-cache storage, keys and purge.

pub mod storage;
