//! The gRPC contract, compiled once in the `bertd-proto` crate (`proto/`) and shared with `bertctl`.
pub use bertd_proto::{FILE_DESCRIPTOR_SET, bert, google};
