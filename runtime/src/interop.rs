//! The real FastStream as a peer in interop tests: a Python script run with the virtualenv's
//! interpreter that `scripts/faststream.sh` installs (FastStream 0.7.8 from PyPI), talking to
//! the test over stdout, one JSON object per line.
//!
//! The interpreter is `$BROOK_FASTSTREAM_PYTHON`, or the script's default place
//! (`~/.cache/brook-ci/faststream-venv/bin/python`). A test that cannot find it fails and says
//! how to install it: an interop test that checked nothing must never pass.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The FastStream virtualenv's Python.
pub fn faststream_python() -> PathBuf {
    let path = match std::env::var_os("BROOK_FASTSTREAM_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/brook-ci/faststream-venv/bin/python"),
    };
    assert!(
        path.exists(),
        "FastStream's Python is not at {}: run `bash scripts/faststream.sh` (scripts/test does), or set BROOK_FASTSTREAM_PYTHON",
        path.display()
    );
    path
}

/// A running FastStream script.
pub struct FastStream {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl FastStream {
    /// Runs `script` (Python source) with `args` (`sys.argv[1:]`).
    pub fn spawn(script: &str, args: &[&str]) -> FastStream {
        let mut child = Command::new(faststream_python())
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start FastStream's Python: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        FastStream {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line the script printed, parsed as JSON, within `timeout`; panics (with the
    /// script's stderr) if it ends or stays silent.
    pub async fn next(&mut self, timeout: Duration) -> serde_json::Value {
        let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => panic!("FastStream script ended early:\n{}", self.stderr().await),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "FastStream script said nothing within {timeout:?}:\n{}",
                    self.stderr().await
                )
            }
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("FastStream script printed {line:?}, not JSON: {e}"))
    }

    /// Waits at most `timeout` for the script to exit successfully.
    pub async fn finish(mut self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => panic!(
                "FastStream script failed ({status:?}):\n{}",
                self.stderr().await
            ),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "FastStream script did not finish within {timeout:?}:\n{}",
                    self.stderr().await
                )
            }
        }
    }

    async fn stderr(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), err.read_to_string(&mut text)).await;
        }
        text
    }
}
