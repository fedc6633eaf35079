//! A real YAML parse of shipped example files, through Python's yaml module
//! (no Rust YAML crate in this project).

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs the Python `script` — it reads `document` from stdin with
/// `yaml.safe_load` and asserts on it — and fails with its error output,
/// naming `what`, when the script does. Without Python's yaml module the
/// parse is left out (said on stderr), except in CI (`CI` set: `.ci/run`
/// installs python3-yaml), where a missing parser is a failure.
pub fn check_with_python(what: &str, document: &str, script: &str) {
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_yaml {
        return super::missing::program_missing(
            &format!("the YAML parse of {what}"),
            "python3's yaml module",
            "apt-get install -y python3-yaml",
        );
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(document.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("python3");
    assert!(
        output.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
