//! The `ozbus` binary: everything lives in the library's `cli`.

fn main() -> std::process::ExitCode {
    ozbus::cli::main()
}
