//! nsbox: a self-hosted code-execution API that runs untrusted Python in fresh Linux namespaces.
//!
//! Layers, each using only those below it: the sandbox and scanner crates; `config`;
//! `service` (the run service every front end calls); `host` (what `serve`, `run` and
//! `check` prepare on this machine); the front ends `api` (HTTP), `mcp`, `run` and `check`;
//! `server` and `cli` on top. See docs/architecture.md.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
pub mod egress;
pub mod host;
pub mod mcp;
pub mod packages;
pub mod run;
pub mod server;
pub mod service;
pub mod systemd;

pub use nsbox_sandbox as sandbox;
pub use nsbox_scanner as scanner;
