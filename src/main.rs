//! The `klais` binary: the command line of `src/cli/`, one file per command.
//! Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
