//! Builds the warm path's run init (`init/run-init.c`), a static program of a few KiB that
//! the library carries and a zygote execs as each run's PID 1 (warm.rs, the nested shape).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/run-init.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("nsbox-run-init");
    // The program is x86_64 assembly at heart (its system calls); elsewhere the library
    // carries none and zygotes keep the two-copy shape.
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64")
        || env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fcf-protection=none",
            "-fno-pie",
            "-no-pie",
            "-static",
            "-nostdlib",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&out)
        .arg("init/run-init.c")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build init/run-init.c: {e}"));
    assert!(status.success(), "{cc} could not build init/run-init.c");
    println!("cargo:rustc-cfg=nsbox_run_init");
}
