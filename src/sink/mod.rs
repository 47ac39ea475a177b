//! Where rows go: Parquet encoding and the object store (local directory or S3).
pub mod lake;
pub mod parquet;
pub mod store;
