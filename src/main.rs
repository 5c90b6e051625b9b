use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    imgsearch::telemetry::init();
    let cli = imgsearch::cli::Cli::parse();
    match imgsearch::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
