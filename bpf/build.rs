//! Builds the C kernel programs with clang into BPF objects that lib.rs
//! embeds. vmlinux.h is generated from the build machine's BTF with bpftool
//! (CO-RE relocations make the object run on other kernels), or taken from
//! STARLING_VMLINUX_H when set.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Objects to build: sensor.bpf.c includes the program files of each area.
const PROGRAMS: &[&str] = &["sensor"];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("c");
    println!("cargo:rerun-if-env-changed=STARLING_VMLINUX_H");
    println!("cargo:rerun-if-changed=c");

    let vmlinux = out.join("vmlinux.h");
    match env::var_os("STARLING_VMLINUX_H") {
        Some(path) => {
            std::fs::copy(&path, &vmlinux).unwrap_or_else(|e| {
                panic!("copying STARLING_VMLINUX_H={path:?}: {e}");
            });
        }
        None => generate_vmlinux(&vmlinux),
    }

    for prog in PROGRAMS {
        let input = src.join(format!("{prog}.bpf.c"));
        let output = out.join(format!("{prog}.bpf.o"));
        let status = Command::new(env::var("CLANG").unwrap_or_else(|_| "clang".into()))
            .args([
                "-g",
                "-O2",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
            ])
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .status()
            .unwrap_or_else(|e| panic!("running clang (install it with scripts/setup): {e}"));
        assert!(status.success(), "clang failed on {}", input.display());
    }
}

fn generate_vmlinux(dest: &Path) {
    let btf = "/sys/kernel/btf/vmlinux";
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running bpftool (install it with scripts/setup, or set STARLING_VMLINUX_H): {e}"
            )
        });
    assert!(
        output.status.success(),
        "bpftool could not dump {btf}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(dest, output.stdout).expect("writing vmlinux.h into OUT_DIR");
}
