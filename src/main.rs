//! The `cognihook` binary: everything lives in the library; see `cognihook::cli`.

fn main() -> std::process::ExitCode {
    cognihook::cli::main()
}
