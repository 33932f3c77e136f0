// Records the git commit and dirty flag of the tree the binary is built
// from, for run manifests.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for p in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".git/HEAD",
        ".git/index",
        ".git/refs",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    // Dirty means the sources the binary is built from differ from the
    // commit; results and reports written into the tree do not count.
    let dirty = match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".cargo",
    ]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    // A CUDA build on a machine without a GPU links against stubs of the
    // driver and cuBLAS (scripts/build-cuda.sh makes them).
    println!("cargo:rerun-if-env-changed=PDBENCH_CUDA_STUBS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Some(dir) = std::env::var_os("PDBENCH_CUDA_STUBS") {
            println!(
                "cargo:rustc-link-search=native={}",
                std::path::Path::new(&dir).display()
            );
        }
    }
    println!("cargo:rustc-env=PDBENCH_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=PDBENCH_GIT_DIRTY={dirty}");
}
