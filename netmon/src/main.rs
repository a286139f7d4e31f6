//! The `netmon` binary: all the work is in the library; this only hands over the exit code.
fn main() -> std::process::ExitCode {
    netmon::cli::main()
}
