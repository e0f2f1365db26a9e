//! The `cognihook` binary: everything lives in the library; see `cognihook::cli`.

/// jemalloc instead of glibc's malloc: an event allocates and frees many small buffers on the
/// HTTP worker and hands some to the sequencer and projector threads, where glibc's arenas cost
/// about a tenth of the process's CPU. Measured in bench/README.md (tenth session): 6 % less CPU
/// per event, +6–11 % req/s, peak RSS 38 → 41–44 MiB; mimalloc was as fast but peaked at 61 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the system after about a
/// second instead of ten. The idempotency keys' LSM tree (`store::sqlite::keys`) frees its
/// memtables and compaction buffers in bursts of megabytes; with the default decay the
/// allocator kept them and peak RSS over a 60 s run at full speed was 69–75 MiB, with this
/// 62 MiB at no measured cost (bench/README.md, eleventh session). Overridden by `MALLOC_CONF`
/// (`_RJEM_MALLOC_CONF`) in the environment.
#[allow(unsafe_code)]
// SAFETY: jemalloc declares this symbol weak and reads it as a NUL-terminated C string; this
// definition is one (a thin pointer to static bytes ending in NUL), never written.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    cognihook::cli::main()
}
