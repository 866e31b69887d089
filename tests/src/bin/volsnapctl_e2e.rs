//! `volsnapctl` itself (`volsnapctl::main`, the same code as the `volsnapctl` binary),
//! built inside this package so its tests find it through
//! `env!("CARGO_BIN_EXE_volsnapctl-e2e")`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    volsnapctl::main().await
}
