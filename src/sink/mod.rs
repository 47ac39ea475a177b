//! Where rows go: Parquet encoding and the object store (local directory or S3).
pub mod encoders;
pub mod events;
pub mod lake;
pub mod parquet;
pub mod spill;
pub mod store;
pub mod text;
