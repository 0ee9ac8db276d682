//! The `carepath` command. All behaviour lives in [`carepath_worker::cli`].

fn main() -> std::process::ExitCode {
    carepath_worker::cli::main()
}
