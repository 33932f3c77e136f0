use clap::Parser;

fn main() {
    let cli = pdbench::cli::Cli::parse();
    match pdbench::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}
