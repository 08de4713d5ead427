//! The store's own files: the private data directory and small best-effort helpers, shared
//! with the key file (they live in `tokenkeeper-crypto`, which both backends use).

pub(crate) use tokenkeeper_crypto::fs::{ensure_private_dir, io_error};
