//! `volsnapctl`: see the crate docs and docs/ctl.md.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    volsnapctl::main().await
}
