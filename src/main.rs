//! The `cognihook` binary: everything lives in the library; see `cognihook::cli`.

/// jemalloc instead of glibc's malloc: an event allocates and frees many small buffers on the
/// HTTP worker and hands some to the sequencer and projector threads, where glibc's arenas cost
/// about a tenth of the process's CPU. Measured in bench/README.md (tenth session): 6 % less CPU
/// per event, +6–11 % req/s, peak RSS 38 → 41–44 MiB; mimalloc was as fast but peaked at 61 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cognihook::cli::main()
}
