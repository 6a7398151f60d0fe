fn main() {
    let files = [
        "proto/starling/v1/event.proto",
        "proto/starling/v1/data.proto",
        "proto/starling/v1/task.proto",
        "proto/starling/v1/status.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    if let Err(e) = prost_build::Config::new().compile_protos(&files, &["proto"]) {
        // protoc comes from Debian's protobuf-compiler (scripts/setup installs it).
        panic!("compiling the .proto files failed (is protoc installed? run scripts/setup): {e}");
    }
}
