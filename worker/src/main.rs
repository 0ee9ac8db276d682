//! The `carepath` command. All behaviour lives in [`carepath_worker::cli`].

/// mimalloc rather than glibc's malloc: a burst of timers allocates and frees many small
/// values on two threads, where glibc spent a fifth of the time (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    carepath_worker::cli::main()
}
