use clap::Parser;
use pdbench::cli::Command;

fn main() {
    // Before anything else: a binary built with target-cpu=native on one
    // host would die with an illegal instruction on a host that lacks its
    // features; say so instead.
    if let Err(e) = pdbench::env::check_build_features() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
    let cli = pdbench::cli::Cli::parse();
    // Commands that only print end quietly when the reader of stdout goes
    // away (`pdbench list | head`), like other Unix tools, instead of
    // panicking in `println!`. Commands that score keep SIGPIPE ignored:
    // the scoring sandbox writes to a child's stdin and must see EPIPE.
    #[cfg(unix)]
    if matches!(
        cli.command,
        Command::List(_)
            | Command::Report(_)
            | Command::Models(_)
            | Command::Compare(_)
            | Command::Merge(_)
    ) {
        // SAFETY: restoring a signal's default disposition before any threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match pdbench::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}
