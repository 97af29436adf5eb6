//! Ingest: the thin I/O adapters that take datagrams off a receive queue and
//! hand each one to its [`crate::shard::Shard`].
//!
//! Today: the UDP backend ([`udp`]). The AF_XDP backend joins with the kernel
//! data plane, behind the same shard pipeline.

pub mod af_xdp;
pub mod udp;
