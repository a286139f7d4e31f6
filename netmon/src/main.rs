//! The `netmon` binary: all the work is in the library; this only picks the allocator
//! and hands over the exit code.

/// mimalloc, not glibc's malloc: every event is allocated on the reader thread and
/// freed on whichever consumer (sink, API, metrics, history) drops it last. glibc
/// returns such frees to the allocating arena through its slow paths (`_int_malloc`,
/// `_int_free`, `malloc_consolidate` were a tenth of `netmon run`'s CPU under load);
/// mimalloc's per-thread heaps take them back in batches.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    netmon::cli::main()
}
