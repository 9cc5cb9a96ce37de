//! nsbox: a self-hosted code-execution API that runs untrusted Python in fresh Linux namespaces.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod host;
pub mod run;
pub mod sandbox;
pub mod scanner;
pub mod server;
mod sys;
pub mod systemd;
