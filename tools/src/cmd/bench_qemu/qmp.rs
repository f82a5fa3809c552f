//! A QMP client (QEMU's machine protocol: one JSON object per line) on a UNIX socket, with a
//! deadline on every wait.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snafu::{ResultExt, Snafu};

/// The longest QMP reply or event line accepted.
const MAX_LINE: usize = 1 << 20;
/// How long a QMP command may take to answer.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Errors of a QMP conversation.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum QmpError {
    /// The socket failed.
    #[snafu(display("QMP {what}: {source}"))]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer broke the protocol.
    #[snafu(display("QMP: {what}"))]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// A command failed.
    #[snafu(display("QMP {command} failed: {class}: {desc}"))]
    Command {
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// A deadline passed.
    #[snafu(display("QMP: no answer to {what} within {} s", within.as_secs_f64()))]
    Deadline {
        /// What was awaited.
        what: String,
        /// The deadline.
        within: Duration,
    },
}

type Result<T, E = QmpError> = std::result::Result<T, E>;

/// A QMP client on a UNIX socket: one command at a time, events skipped, replies matched
/// by their `id`.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// The greeting's `QMP` object (version and capabilities).
    pub greeting: Value,
}

impl Qmp {
    /// Connect to the QMP socket at `path` (retrying until it exists, as QEMU creates it
    /// while starting), read the greeting and negotiate capabilities, by `deadline`.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Self> {
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).context(IoSnafu {
                        what: format!("connect to QMP socket {}", path.display()),
                    })
                }
            }
        };
        let writer = sock.try_clone().context(IoSnafu {
            what: "clone the QMP socket",
        })?;
        let mut q = Self {
            reader: BufReader::new(sock),
            writer,
            next_id: 1,
            greeting: Value::Null,
        };
        let g = q.read_message(deadline, "the QMP greeting")?;
        q.greeting = g.get("QMP").cloned().ok_or_else(|| QmpError::Protocol {
            what: format!("the first message is not a greeting: {g}"),
        })?;
        q.execute("qmp_capabilities", None, COMMAND_DEADLINE)?;
        Ok(q)
    }

    /// Read one JSON object line by `deadline`.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value> {
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Deadline {
                    what: what.into(),
                    within: COMMAND_DEADLINE,
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .context(IoSnafu {
                    what: "set the QMP read timeout",
                })?;
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(e).context(IoSnafu {
                        what: what.to_string(),
                    })
                }
            };
            if buf.is_empty() {
                return Err(QmpError::Protocol {
                    what: format!("the connection closed while waiting for {what}"),
                });
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if line.len() > MAX_LINE {
                return Err(QmpError::Protocol {
                    what: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            if done {
                if line.iter().all(u8::is_ascii_whitespace) {
                    line.clear();
                    continue;
                }
                return serde_json::from_slice(&line).map_err(|e| QmpError::Protocol {
                    what: format!("not JSON ({e}): {}", String::from_utf8_lossy(&line)),
                });
            }
        }
    }

    /// Run `command` with `arguments`; its `return` value, or its error, within `within`.
    /// Asynchronous events that arrive meanwhile are skipped.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        within: Duration,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .set_write_timeout(Some(within))
            .context(IoSnafu {
                what: "set the QMP write timeout",
            })?;
        self.writer.write_all(line.as_bytes()).context(IoSnafu {
            what: format!("send QMP {command}"),
        })?;
        let deadline = Instant::now() + within;
        loop {
            let m = self.read_message(deadline, command).map_err(|e| match e {
                QmpError::Deadline { what, .. } => QmpError::Deadline { what, within },
                e => e,
            })?;
            if m.get("event").is_some() {
                continue;
            }
            if m.get("id") != Some(&json!(id)) {
                return Err(QmpError::Protocol {
                    what: format!("a reply to {command} (id {id}) with another id: {m}"),
                });
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Command {
                    command: command.into(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            return Err(QmpError::Protocol {
                what: format!("a reply to {command} with neither return nor error: {m}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    /// A fake QMP server on a UNIX socket: greeting, then for each command line an event
    /// and a reply with the command's id, as QEMU interleaves them.
    fn fake_server(dir: &Path, replies: Vec<Value>) -> std::thread::JoinHandle<Vec<Value>> {
        let path = dir.join("fake.qmp");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            writeln!(
                s,
                r#"{{"QMP": {{"version": {{"qemu": {{"micro": 22, "minor": 2, "major": 7}}}}, "capabilities": ["oob"]}}}}"#
            )
            .expect("greeting");
            let mut got = Vec::new();
            let mut replies = replies.into_iter();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return got;
                }
                let cmd: Value = serde_json::from_str(&line).expect("command is JSON");
                let id = cmd["id"].clone();
                got.push(cmd);
                // An event first, split over two writes, then the reply.
                s.write_all(b"{\"event\": \"STOP\", ").expect("event");
                s.write_all(b"\"data\": {}}\r\n").expect("event");
                let mut reply = replies.next().unwrap_or(json!({"return": {}}));
                reply["id"] = id;
                writeln!(s, "{reply}").expect("reply");
            }
        })
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vgpu-qmp-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn qmp_framing_against_a_fake_server() {
        let dir = scratch("framing");
        let server = fake_server(
            &dir,
            vec![
                json!({"return": {}}),
                json!({"return": {"status": "completed", "ram": {"transferred": 1234}}}),
                json!({"error": {"class": "GenericError", "desc": "no such thing"}}),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut q = Qmp::connect(&dir.join("fake.qmp"), deadline).expect("connect");
        assert_eq!(q.greeting["version"]["qemu"]["major"], json!(7));
        let r = q
            .execute("query-migrate", None, COMMAND_DEADLINE)
            .expect("query-migrate");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["ram"]["transferred"], 1234);
        let e = q
            .execute("migrate", Some(json!({"uri": "tcp:x"})), COMMAND_DEADLINE)
            .expect_err("an error reply is an error");
        assert_eq!(
            e.to_string(),
            "QMP migrate failed: GenericError: no such thing"
        );
        drop(q);
        let got = server.join().expect("server");
        let names: Vec<_> = got.iter().map(|c| c["execute"].clone()).collect();
        assert_eq!(
            names,
            vec![
                json!("qmp_capabilities"),
                json!("query-migrate"),
                json!("migrate")
            ]
        );
        assert_eq!(got[2]["arguments"]["uri"], "tcp:x");
        let ids: Vec<_> = got.iter().map(|c| c["id"].as_u64().unwrap_or(0)).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn qmp_refuses_a_reply_with_another_id_and_a_non_greeting() {
        let dir = scratch("badid");
        let path = dir.join("fake.qmp");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            writeln!(s, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).expect("hi");
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            writeln!(s, r#"{{"return": {{}}, "id": 99}}"#).expect("reply");
        });
        let err = Qmp::connect(&path, Instant::now() + Duration::from_secs(10))
            .expect_err("a reply with a wrong id");
        assert!(err.to_string().contains("another id"), "{err}");
        server.join().expect("server");

        let path2 = dir.join("fake2.qmp");
        let listener = UnixListener::bind(&path2).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            writeln!(s, r#"{{"hello": 1}}"#).expect("hi");
        });
        let err = Qmp::connect(&path2, Instant::now() + Duration::from_secs(10))
            .expect_err("not a greeting");
        assert!(err.to_string().contains("not a greeting"), "{err}");
        server.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn qmp_gives_up_at_its_deadline_on_a_silent_server() {
        let dir = scratch("silent");
        let path = dir.join("fake.qmp");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            // Accept and say nothing until the client hangs up.
            let (s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
        });
        // A deadline already passed: the client must not wait for the greeting at all.
        let err = Qmp::connect(&path, Instant::now()).expect_err("no greeting");
        assert!(
            err.to_string().contains("no answer to the QMP greeting"),
            "{err}"
        );
        server.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
