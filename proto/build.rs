//! Compiles the gRPC contract (`bert/v1/*.proto`, next to this file) into Rust, with a vendored
//! protoc: nothing to install on a fresh machine.
use std::path::PathBuf;

const PROTOS: [&str; 5] = [
    "bert/v1/common.proto",
    "bert/v1/encoder.proto",
    "bert/v1/classifier.proto",
    "bert/v1/tokenizer.proto",
    "bert/v1/model.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=bert");
    println!("cargo:rerun-if-changed=google");
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("bert_v1_descriptor.bin"))
        // Clients print results as JSON (bertctl info, tokenize). google.rpc.Status carries
        // `Any` details, which have no JSON form here, so the fields holding one are skipped.
        .type_attribute(".bert.v1", "#[derive(serde::Serialize)]")
        .field_attribute(".bert.v1.EncodeResponse.error", "#[serde(skip)]")
        .field_attribute(".bert.v1.ClassifyResponse.error", "#[serde(skip)]")
        .compile_protos(
            &PROTOS.map(PathBuf::from),
            &[PathBuf::from("."), well_known],
        )?;
    Ok(())
}
