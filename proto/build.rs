//! Compiles the .proto contracts with the protoc shipped inside `protoc-bin-vendored`, so a fresh
//! machine needs nothing installed by hand.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY of intent: build scripts are single-threaded; edition 2021 keeps this safe.
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("descriptor.bin"))
        .compile_protos(&["billing_service.proto", "patient_event.proto", "appointment_event.proto"], &["."])?;
    println!("cargo:rerun-if-changed=billing_service.proto");
    println!("cargo:rerun-if-changed=patient_event.proto");
    println!("cargo:rerun-if-changed=appointment_event.proto");
    Ok(())
}
