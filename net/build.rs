fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: a fresh machine needs no system protobuf compiler.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto/raft.proto");
    tonic_build::configure().build_client(true).build_server(true).compile_protos(&["proto/raft.proto"], &["proto"])?;
    Ok(())
}
