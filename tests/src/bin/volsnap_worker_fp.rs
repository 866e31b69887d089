//! `volsnap-worker` built with the `failpoints` feature, for the crash tests: the very
//! same CLI (`volsnap_worker::cli::main`), so `VOLSNAP_CRASH_AT=<point>` works. Tests
//! find it through `env!("CARGO_BIN_EXE_volsnap-worker-fp")`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    volsnap_worker::cli::main().await
}
