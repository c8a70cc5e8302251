//! The `bert.v1` contract as Rust types, clients and service traits, generated from the `.proto`
//! files beside this crate. The server (`bertd`) and its client (`bertctl`) both build on this
//! crate, so the two can never disagree on a field.
#![allow(clippy::all, missing_docs)]

pub mod bert {
    pub mod v1 {
        tonic::include_proto!("bert.v1");
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The contract's file descriptors, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bert_v1_descriptor");
