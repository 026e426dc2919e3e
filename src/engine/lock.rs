//! One stage-running process per run directory.
//!
//! `Engine::run` holds an exclusive `flock` on `RUN/.lock` for as long as it runs stages. The
//! file names the holder (PID, command line, start time) so that a second process can say who it
//! waits for or who refused it. The kernel releases the lock when its holder dies, however it
//! dies; a holder that ends normally also empties the file, so a non-empty file found by the
//! next holder is the trace of a process that was killed, and is reported as taken over.
//! Readers (`status`, `inspect`, `query`, `report`'s compared runs) never take it: every table
//! is renamed into place whole and the manifest is written last, so they see finished states.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::ui::Ui;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held run-directory lock; released (and the file emptied) on drop.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Take the lock of `run_dir`: at once, or after the holder ends when `wait` is set;
    /// otherwise an [`Error::Locked`] naming the holder.
    pub fn acquire(run_dir: &Path, wait: bool, ui: &Ui) -> Result<RunLock> {
        Self::acquire_file(run_dir, LOCK_FILE, wait, ui)
    }

    /// Take the lock file `name` in `dir` the same way: the grain of a part of a stage
    /// (`STAGE/parts/<i>-of-<n>.lock`), which parts of one stage each hold at once.
    pub fn acquire_file(dir: &Path, name: &str, wait: bool, ui: &Ui) -> Result<RunLock> {
        let run_dir = dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("failed to create directory", dir, e))?;
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("failed to open the run directory's lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = describe_holder(&read_holder_of_held(&mut file));
                if !wait {
                    return Err(Error::Locked {
                        run_dir: run_dir.to_path_buf(),
                        holder,
                    });
                }
                ui.status(
                    "Waiting",
                    format!("for {holder}, which holds {}", run_dir.display()),
                );
                file.lock()
                    .map_err(|e| Error::io("failed to lock", &path, e))?;
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("failed to lock", &path, e)),
        }
        let previous = read_holder(&mut file);
        if !previous.trim().is_empty() {
            ui.warn(format!(
                "took over the lock of {} left by {}, which ended without releasing it (killed?); its unfinished stage, if any, reruns",
                run_dir.display(),
                describe_holder(&previous)
            ));
        }
        write_holder(&mut file, &path)?;
        Ok(RunLock { file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Emptied first: an empty file is a clean release. The lock itself goes with the file.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The text of a lock another process holds. A holder writes it just after taking the lock, so
/// an empty file is read again for a moment before it is taken as saying nothing.
fn read_holder_of_held(file: &mut File) -> String {
    for _ in 0..20 {
        let text = read_holder(file);
        if !text.trim().is_empty() {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    read_holder(file)
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(4096).read_to_string(&mut s);
    s
}

fn write_holder(file: &mut File, path: &Path) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "pid {}\ncommand {}\nsince {since}\n",
        std::process::id(),
        command.join(" ")
    );
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|_| file.write_all(text.as_bytes()))
        .and_then(|_| file.flush())
        .map_err(|e| Error::io("failed to write", path, e))
}

/// "process 1234 (`simat run pipelines/demo.toml`, since 2026-11-28T15:40:00Z)", from the lock
/// file's text; "another process" when it names none (a holder from before it wrote).
fn describe_holder(text: &str) -> String {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    match (field("pid "), field("command "), field("since ")) {
        (Some(pid), Some(cmd), Some(since)) => format!("process {pid} (`{cmd}`, since {since})"),
        (Some(pid), _, _) => format!("process {pid}"),
        _ => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Ui::quiet();
        let held = RunLock::acquire(dir.path(), false, &ui).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.contains(&format!("pid {}", std::process::id())));
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let err = RunLock::acquire(dir.path(), false, &ui).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(
            msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            ""
        );
        // A holder killed before its drop leaves its text behind, unlocked.
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "pid 99999999\ncommand simat run x\nsince then\n",
        )
        .unwrap();
        let again = RunLock::acquire(dir.path(), false, &ui).unwrap();
        drop(again);
    }

    #[test]
    fn holders_are_described_from_the_file() {
        assert_eq!(
            describe_holder("pid 7\ncommand simat run p.toml\nsince 2026-01-01T00:00:00Z\n"),
            "process 7 (`simat run p.toml`, since 2026-01-01T00:00:00Z)"
        );
        assert_eq!(describe_holder(""), "another process");
    }
}
