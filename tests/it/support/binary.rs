//! The real `cognihook` binary, spawned with a temporary data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cognihook"))
}

/// A command for the binary with a clean, test-controlled environment.
pub fn command(data_dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("COGNIHOOK_DATA_DIR", data_dir)
        .env("COGNIHOOK_LISTEN", "127.0.0.1:0")
        .env("COGNIHOOK_LOG", "info");
    c
}

/// Runs a command to completion with a time limit.
pub fn run(mut c: Command, timeout: Duration) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn cognihook");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("cognihook did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `cognihook serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the server wrote to stdout (the audit log), collected by a thread.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Lines the server wrote to stderr (its log), collected by a thread.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout_thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts `serve` and waits until it logs its listening address.
    pub fn start(c: Command) -> Server {
        Self::start_with(c, &[])
    }

    /// Starts `serve ARGS…` and waits until it logs its listening address.
    pub fn start_with(mut c: Command, args: &[&str]) -> Server {
        c.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn cognihook serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log_sink.lock().unwrap().push(line.clone());
                if !sent {
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(Ok(addr));
                        sent = true;
                        continue;
                    }
                }
                eprintln!("[cognihook] {line}");
            }
            if !sent {
                let _ = tx.send(Err("exited before listening".to_string()));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(a)) => a,
            other => {
                let _ = child.kill();
                panic!("cognihook serve did not start: {other:?}");
            }
        };
        Server {
            child,
            addr,
            stderr: log,
            stdout: lines,
            stdout_thread: Some(stdout_thread),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for exit (bounded) and returns the exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("cognihook did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Every stdout line, after the process has exited.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "cognihook listening" {
        return None;
    }
    v.get("addr")?.as_str()?.parse().ok()
}
