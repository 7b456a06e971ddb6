//! Compiles `proto/` into Rust with Debian's `protoc`, through tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["common", "api", "private", "curator"].map(|p| format!("proto/{p}.proto"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto".to_owned()])?;
    Ok(())
}
