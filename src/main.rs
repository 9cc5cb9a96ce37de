//! The nsbox binary: the server, or (re-executed by the server) its spawner.

use std::process::ExitCode;

use nsbox::sandbox::spawner;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == spawner::SPAWNER_ARG)
    {
        return ExitCode::from(spawner::main().clamp(0, 255) as u8);
    }
    nsbox::cli::main()
}
