//! The `simat` executable: everything is in [`simat::cli`].

fn main() -> std::process::ExitCode {
    simat::cli::main()
}
