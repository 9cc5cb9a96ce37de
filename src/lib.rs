//! nsbox: a self-hosted code-execution API that runs untrusted Python in fresh Linux namespaces.

pub mod api;
pub mod cli;
pub mod sandbox;
pub mod scanner;
pub mod server;
mod sys;
