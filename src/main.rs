//! The `mqlsync` command line (being written): a thin clap front over the library.
//! Subcommands so far: `sandbox` (the emulators, `mqlsync::sandbox::cli`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mqlsync",
    version,
    about = "Sales owns the MQL threshold; marketing owns scoring."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Salesforce and Marketo emulators on 127.0.0.1 until Ctrl-C / SIGTERM.
    Sandbox(mqlsync::sandbox::cli::SandboxArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Sandbox(args) => runtime.block_on(mqlsync::sandbox::cli::run(
            args,
            mqlsync::sandbox::cli::shutdown_signal(),
        ))?,
    }
    Ok(())
}
