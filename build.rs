//! Compiles `proto/` into Rust with Debian's `protoc`, through tonic-prost-build.

/// The messages that hold unsealed keys: the sealed configuration (NUK, join key, CUK), the
/// enrolment journal (NUK, node and join keys, CUK) and held shares of peers' CUKs.
const SECRET_MESSAGES: [&str; 4] = [
    "polis.private.SealedConfiguration",
    "polis.private.EnrolmentJournal",
    "polis.private.HeldShares",
    "polis.private.Share",
];

/// Polis's own definitions of libcrypto functions that libtss2-esys must bind to
/// (`src/tpm/openssl_context.rs`): an executable's symbols reach a shared library's calls only
/// if they are in its dynamic symbol table.
const INTERPOSED: [&str; 2] = ["OSSL_LIB_CTX_new", "OSSL_LIB_CTX_free"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for symbol in INTERPOSED {
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol={symbol}");
    }
    let protos = ["common", "api", "private", "curator"].map(|p| format!("proto/{p}.proto"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // The messages that carry keys in the clear once decoded are wiped when dropped.
    let mut config = tonic_prost_build::configure();
    for secret in SECRET_MESSAGES {
        config = config.type_attribute(
            secret,
            "#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]",
        );
    }
    config.compile_protos(&protos, &["proto".to_owned()])?;
    Ok(())
}
