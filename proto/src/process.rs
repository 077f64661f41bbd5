//! Servers as child processes: the `listening on ADDR` line a server prints
//! on standard output once it serves, and the one place a parent (the
//! benchmarks, the test harness) starts a server and waits for that line.
//!
//! Standard error goes to a log file, never to a pipe: a pipe nobody drains
//! fills up and stalls the server.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a server's first line of standard output starts with.
pub const LISTENING: &str = "listening on ";

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The line a server prints once its listener is bound to `addr`.
pub fn listening_line(addr: impl fmt::Display) -> String {
    format!("{LISTENING}{addr}")
}

/// The address in a listening line, if `line` is one.
pub fn parse_listening(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix(LISTENING)
        .filter(|addr| !addr.is_empty())
}

/// `n` distinct ports of 127.0.0.1 that were free a moment ago (for
/// servers that must know each other's addresses before they start, so
/// port 0 cannot be used).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A server that did not start: what it was, why, and the end of its log.
#[derive(Debug)]
pub struct StartError {
    pub what: String,
    pub reason: String,
    pub log: PathBuf,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not start: {}", self.what, self.reason)?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if !tail.is_empty() {
            write!(f, "\nlast lines of {}:", self.log.display())?;
            for line in tail.iter().rev() {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for StartError {}

/// A running server child process; killed (SIGKILL) and reaped when
/// dropped, so a failing test or benchmark leaves nothing behind.
#[derive(Debug)]
pub struct ServerChild {
    pub child: Child,
    /// The address from its listening line.
    pub addr: String,
    /// Where its standard error is appended.
    pub log: PathBuf,
}

impl ServerChild {
    /// Starts `command` (stdout piped, stderr appended to `log`) and waits
    /// up to [`START_TIMEOUT`] for its listening line. `what` names the
    /// server in errors ("metaserver 2").
    pub fn spawn(mut command: Command, what: &str, log: &Path) -> Result<Self, StartError> {
        let fail = |reason: String| StartError {
            what: what.to_string(),
            reason,
            log: log.to_path_buf(),
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| fail(format!("cannot open its log {}: {e}", log.display())))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| fail(format!("cannot run {:?}: {e}", command.get_program())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The read happens on a thread of its own so that a server that
        // hangs before listening costs a timeout, not a hung parent.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let started = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => match parse_listening(&line) {
                Some(addr) => Ok(addr.to_string()),
                None if line.is_empty() => Err(fail(match child.wait() {
                    Ok(status) => format!("it exited ({status}) before listening"),
                    Err(e) => format!("it closed its output before listening ({e})"),
                })),
                None => Err(fail(format!("its first line was {line:?}"))),
            },
            Ok(Err(e)) => Err(fail(format!("reading its output: {e}"))),
            Err(_) => Err(fail(format!("no listening line within {START_TIMEOUT:?}"))),
        };
        match started {
            Ok(addr) => Ok(Self {
                child,
                addr,
                log: log.to_path_buf(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; `None` if it
    /// is still running then (it is killed when dropped).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Sends `signal` to the process (if it still runs).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped
        // before `self` is dropped, so the pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Everything the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// User + system CPU seconds the process has used so far (Linux
    /// `/proc`; 0 where that cannot be read).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds process `pid` has used (Linux `/proc`; 0
/// where that cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_round_trip() {
        let line = listening_line("127.0.0.1:7101");
        assert_eq!(parse_listening(&line), Some("127.0.0.1:7101"));
        assert_eq!(parse_listening("listening on \n"), None);
        assert_eq!(parse_listening("error: port in use"), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(5).unwrap();
        let unique: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn a_server_that_exits_before_listening_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fake.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'bad flag --x' >&2; exit 3"]);
        let err = ServerChild::spawn(command, "fake server", &log).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fake server did not start"), "{text}");
        assert!(text.contains("exited"), "{text}");
        assert!(text.contains("bad flag --x"), "{text}");
    }

    #[test]
    fn a_listening_server_is_killed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fake.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'listening on 127.0.0.1:9'; exec sleep 30"]);
        let server = ServerChild::spawn(command, "fake server", &log).unwrap();
        assert_eq!(server.addr, "127.0.0.1:9");
        let pid = server.pid();
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
