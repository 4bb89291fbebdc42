use clap::Parser as _;

// A request allocates and frees many small buffers across worker threads: glibc's
// malloc took about a tenth of the server's CPU in the delivery benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
