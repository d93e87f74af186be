use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`squeeze info ... | head`) instead of failing on a closed pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // squeeze's kernels run on rayon's pool. candle 0.11 runs its large element-wise ops (in
    // training: adding each gradient into its store) on a second pool whose threads spin
    // between calls; on 2 busy cores, waiting for that pool's thread to be woken took a fifth of
    // a LeNet-300-100 epoch. Those ops are memory-bound: run them on the calling thread.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = squeeze::cli::Cli::parse();
    match squeeze::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", squeeze::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
