//! A real browser for the HTML tests: Debian's headless Chromium driven over the DevTools
//! protocol on `--remote-debugging-pipe` (fd 3 for commands, fd 4 for replies and events, each
//! message a JSON text ended by NUL), so no WebDriver or websocket is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// What loading a page showed: its console errors, uncaught exceptions and the requests it made
/// that did not stay inside the file.
#[derive(Debug, Default)]
pub struct PageLog {
    /// Console messages of level error, and uncaught exceptions.
    pub errors: Vec<String>,
    /// URLs requested other than the page itself and `data:` URIs.
    pub requests: Vec<String>,
}

/// A Chromium process and one page in it.
pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    /// Events seen so far.
    pub events: Vec<Value>,
    stderr_path: std::path::PathBuf,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `$CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium() -> std::path::PathBuf {
    let p = std::env::var_os("CHROMIUM")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "the HTML tests need Chromium at {} (scripts/setup.sh installs Debian's `chromium`; or set CHROMIUM)",
        p.display()
    );
    p
}

impl Browser {
    /// Start headless Chromium with a fresh profile, nothing in the background, and open a page.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let stderr_path = profile.path().join("chromium.stderr");
        let (cmd_read, cmd_write) = std::io::pipe().unwrap();
        let (out_read, out_write) = std::io::pipe().unwrap();
        let (cmd_read, out_write): (OwnedFd, OwnedFd) = (cmd_read.into(), out_write.into());
        let (r3, w4) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
        // SAFETY: only async-signal-safe fcntl/dup2 calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The pipes are close-on-exec and may already sit on fd 3 or 4 (they do when the
                // test binary runs outside cargo): `dup2(3, 3)` would keep the flag, and one
                // dup2 could overwrite the other's source. Copy both above 10 first, so that each
                // dup2 onto 3 and 4 makes a fresh descriptor without close-on-exec.
                let high_r = libc::fcntl(r3, libc::F_DUPFD, 10);
                let high_w = libc::fcntl(w4, libc::F_DUPFD, 10);
                if high_r < 0
                    || high_w < 0
                    || libc::dup2(high_r, 3) < 0
                    || libc::dup2(high_w, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high_r);
                libc::close(high_w);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop(cmd_read);
        drop(out_write);
        let mut b = Browser {
            child,
            to: std::fs::File::from(OwnedFd::from(cmd_write)),
            from: BufReader::new(std::fs::File::from(OwnedFd::from(out_read))),
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            stderr_path,
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Runtime", "Log", "Network", "Page"] {
            b.call(&format!("{domain}.enable"), json!({}));
        }
        b
    }

    /// Chromium's own stderr so far, for a failure message.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn try_send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> std::io::Result<u64> {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes)?;
        Ok(self.next_id)
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> u64 {
        match self.try_send(method, params, session) {
            Ok(id) => id,
            Err(e) => panic!(
                "{method}: cannot write to chromium's DevTools pipe ({e}); chromium's stderr:\n{}",
                self.stderr_tail()
            ),
        }
    }

    fn read_message(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).unwrap_or(0);
        assert!(
            n > 0,
            "chromium closed the DevTools pipe; its stderr:\n{}",
            self.stderr_tail()
        );
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    fn wait_reply(&mut self, id: u64, method: &str) -> Value {
        loop {
            let m = self.read_message();
            if m["id"].as_u64() == Some(id) {
                assert!(m.get("error").is_none(), "{method}: {}", m["error"]);
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, None);
        self.wait_reply(id, method)
    }

    /// A DevTools command on the page; its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        let id = self.send(method, params, Some(&session));
        self.wait_reply(id, method)
    }

    /// Open a file and wait for its load event.
    pub fn open(&mut self, file: &Path) -> String {
        let url = format!("file://{}", file.canonicalize().unwrap().display());
        self.call("Page.navigate", json!({"url": url}));
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired")
        {
            let m = self.read_message();
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
        url
    }

    /// Evaluate a JavaScript expression in the page; its value (JSON).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// A PNG screenshot of a rectangle of the page (CSS pixels, page coordinates).
    pub fn screenshot(&mut self, x: f64, y: f64, w: f64, h: f64) -> image::RgbaImage {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": x, "y": y, "width": w, "height": h, "scale": 1}}),
        );
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        image::load_from_memory(&bytes).unwrap().to_rgba8()
    }

    /// The console errors, exceptions and outside requests among the events so far (`page` is
    /// the page's own URL).
    pub fn log(&self, page: &str) -> PageLog {
        let mut log = PageLog::default();
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or("") {
                "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
                    log.errors.push(format!("console: {}", p["args"]))
                }
                "Runtime.exceptionThrown" => log
                    .errors
                    .push(format!("exception: {}", p["exceptionDetails"])),
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    log.errors.push(format!("log: {}", p["entry"]))
                }
                "Network.requestWillBeSent" => {
                    let url = p["request"]["url"].as_str().unwrap_or("").to_string();
                    if url != page && !url.starts_with("data:") {
                        log.requests.push(url);
                    }
                }
                _ => {}
            }
        }
        log
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Never panic here: a drop during a failed test's unwinding would abort the whole run.
        let _ = self.try_send("Browser.close", json!({}), None);
        // Give it a moment to exit cleanly, then make sure.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        let _ = self.from.get_mut().read_to_end(&mut rest);
    }
}
