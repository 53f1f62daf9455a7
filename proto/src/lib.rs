//! Generated protobuf and gRPC code for the cluster's wire protocol.
//!
//! Only `.proto` files and the code generated from them live here; conversions to and
//! from openraft and broker types are written by hand in `ferromq-cluster`. Empty until
//! the cluster issue adds the Raft and peer data-plane services.
#![forbid(unsafe_code)]
