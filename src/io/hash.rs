//! BLAKE3 of files: the digest that fingerprints, manifests and model folders record.

use std::path::Path;

use crate::error::{Error, Result};

/// BLAKE3 of a file's content, hex. Read in blocks (each hashed on all cores) rather than
/// memory-mapped, so that hashing a large input does not inflate the resident set.
pub fn hash_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("failed to hash", path, e))?;
    // Blocks of up to 8 MiB, no bigger than the file: zeroing and faulting in two 8 MiB buffers
    // cost more than hashing a table of a few MiB.
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let buf_len = len.clamp(64 << 10, 8 << 20) as usize;
    let mut hasher = blake3::Hasher::new();
    // One thread reads the next block while the pool hashes the last, so the copy out of the page
    // cache overlaps the hashing. (Not mmap either: a file truncated while mapped kills the
    // process with SIGBUS.)
    let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(1);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(2);
    for _ in 0..2 {
        empty_tx
            .send(vec![0u8; buf_len])
            .expect("room for two buffers");
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> std::io::Result<()> {
            for mut buf in empty_rx {
                let mut n = 0;
                while n < buf_len {
                    match file.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(m) => n += m,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                // A short block is the last one (or an empty file's none).
                if n == 0 || full_tx.send((buf, n)).is_err() || n < buf_len {
                    break;
                }
            }
            Ok(())
        });
        for (buf, n) in full_rx {
            hasher.update_rayon(&buf[..n]);
            let _ = empty_tx.send(buf);
        }
        drop(empty_tx);
        reader
            .join()
            .map_err(|_| Error::Internal("the hashing reader thread panicked".into()))?
            .map_err(|e| Error::io("failed to hash", path, e))
    })?;
    Ok(hasher.finalize().to_hex().to_string())
}
