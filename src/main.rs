use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when the reader of stdout goes
    // away (`pdbench list | head`) instead of panicking in `println!`.
    // Finished samples are on disk already; a run ended so resumes.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = pdbench::cli::Cli::parse();
    match pdbench::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}
