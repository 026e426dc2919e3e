//! The `simat` executable: everything is in [`simat::cli`].

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    simat::cli::main()
}

/// glibc returns a large freed block to the kernel at once (blocks over its mmap threshold, and
/// the heap's top past 128 KiB), and the next allocation of that size faults in and zeroes fresh
/// pages. simat's stages allocate and free the same large buffers over and over (Arrow columns,
/// encoded pages, JSON blocks), so that page faulting was a fifth of `score`'s time. Freed memory
/// is kept for reuse instead. The peak resident set barely moves (measured on Zen 4: score 85 →
/// 87 MiB, retrieve 96 → 109 MiB, a 200k × 512 knn 625 → 632 MiB), since it is the peak.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread runs.
    unsafe {
        // glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): bigger blocks
        // are still mapped on their own, and their memory still goes back when freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
