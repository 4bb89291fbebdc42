use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = piaojia_gateway::cli::Cli::parse();
    match piaojia_gateway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piaojia: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
