//! `imgsearch`: parses the command line and runs the chosen role until it ends or a stop is
//! requested (Ctrl-C, SIGTERM). Each role's wiring lives with the role.

use clap::Parser;

use imgsearch::cli::{Cli, Command};
use imgsearch::shutdown::Shutdown;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    imgsearch::telemetry::init();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if imgsearch::ingest::misconfigured(&error) {
                std::process::ExitCode::from(imgsearch::ingest::EXIT_MISCONFIGURED)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    // The roles that run until told to stop get the signals, registered before they start so a
    // signal at any later moment is seen (see `Shutdown::on_signals`); the others keep Ctrl-C's
    // default of ending the process.
    match command {
        Command::Ingest(args) => {
            let command = args.command().map_err(|e| e.context(imgsearch::ingest::Misconfigured))?;
            imgsearch::ingest::command::run(command, Shutdown::on_signals()).await
        }
        Command::Serve(args) => imgsearch::api::run(args.command(), Shutdown::on_signals()).await,
        Command::Standalone(args) => imgsearch::standalone::run(args.command(), Shutdown::on_signals()).await,
        Command::Controller(args) => imgsearch::controller::run_command(args.command(), Shutdown::on_signals()).await,
        Command::Eval(args) => imgsearch::eval::run(args.command()).await,
        Command::Crd => {
            print!("{}", imgsearch::crd::crd_yaml()?);
            Ok(())
        }
        Command::Openapi => {
            println!("{}", imgsearch::api::openapi().to_pretty_json()?);
            Ok(())
        }
    }
}
