//! The nsbox binary: the server, or (re-executed by the server) its spawner.

use std::process::ExitCode;

use nsbox::sandbox::spawner;

fn main() -> ExitCode {
    // The static build (scripts/build-static.sh, which sets this cfg and the variable) is a
    // single file, so it carries the warm path's shared library inside itself. Registered
    // before anything looks for it, in the server and in the spawner (this same executable,
    // re-executed).
    #[cfg(nsbox_embedded_warm_library)]
    nsbox::sandbox::warm_library::embed(include_bytes!(env!("NSBOX_EMBEDDED_WARM_LIBRARY")));
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == spawner::SPAWNER_ARG)
    {
        return ExitCode::from(spawner::main().clamp(0, 255) as u8);
    }
    // As PID 1 of a container, stay behind as its reaper; nsbox goes on in a child.
    nsbox::sandbox::pid1::become_init_if_pid1();
    nsbox::cli::main()
}
