#[tokio::main]
async fn main() -> std::process::ExitCode {
    volsnap_worker::cli::main().await
}
