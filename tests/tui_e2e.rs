//! End to end: the real binary in a real pseudo-terminal (tmux). Opens the explorer on the
//! bundled model and data, waits for the dense figures, loads a preset and checks that the
//! figures on screen change, then quits and checks the process exited cleanly and the session
//! was journaled. Skipped (with a message) only when tmux is not installed (`.ci/run` installs
//! it); a binary whose `explore` misbehaves, exits early or never draws fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_squeeze");

/// A tmux session on a private server socket (`-L`), so the test never touches anyone
/// else's tmux sessions. `done` is the file the shell writes squeeze's exit status to.
struct Session(String, PathBuf);

impl Session {
    fn tmux(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.0])
            .unwrap_or_default()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.0.as_str()];
        args.extend(keys);
        self.tmux(&args);
    }

    /// Waits until `pred` holds for the screen; returns the last screen either way.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if let Ok(status) = std::fs::read_to_string(&self.1) {
                panic!(
                    "squeeze exited (status {}) while the test waited for {what}; the screen was:\n{s}",
                    status.trim()
                );
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; the screen was:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Our private server only: it holds this one session.
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

/// The text after `label` on the status line that starts with it, e.g. the size figure.
fn figure(screen: &str, label: &str) -> Option<String> {
    screen.lines().find_map(|l| {
        let l = l.trim_start_matches('│');
        let rest = l.strip_prefix(label)?;
        Some(
            rest.split("  ")
                .map(str::trim)
                .find(|s| !s.is_empty())?
                .to_string(),
        )
    })
}

#[test]
fn explore_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipping the end-to-end TUI test: tmux is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("assets/models/lenet-300-100.safetensors");
    let data = root.join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    // Both are tracked in git: their absence is a broken checkout, not a reason to skip.
    for f in [&model, &data] {
        assert!(f.exists(), "{} is missing", f.display());
    }
    let help = Command::new(BIN)
        .args(["explore", "--help"])
        .output()
        .expect("run squeeze explore --help");
    assert!(
        help.status.success(),
        "squeeze explore --help failed ({}): {}",
        help.status,
        String::from_utf8_lossy(&help.stderr)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = dir.path().join("session.jsonl");
    let done = dir.path().join("exit-status");
    let cmd = format!(
        "'{BIN}' explore --model '{}' --data '{}' --session '{}' --out-dir '{}'; echo $? > '{}'",
        model.display(),
        data.display(),
        journal.display(),
        dir.path().join("out").display(),
        done.display(),
    );
    let session = Session(format!("squeeze-e2e-{}", std::process::id()), done.clone());
    session
        .tmux(&[
            "new-session",
            "-d",
            "-s",
            &session.0,
            "-x",
            "140",
            "-y",
            "45",
            "sh",
            "-c",
            &cmd,
        ])
        .expect("tmux new-session");

    // The dense baseline: accuracy on the full set, its size and latency.
    let dense = session.wait_for("the dense figures", Duration::from_secs(90), |s| {
        s.contains("Accuracy vs size")
            && figure(s, "latency").is_some_and(|f| f.contains('s') && !f.contains('…'))
            && figure(s, "accuracy").is_some_and(|f| f.ends_with('%'))
    });
    let dense_size = figure(&dense, "size").expect("size figure");
    assert!(dense.contains("fc1") && dense.contains("fc3"), "{dense}");

    // The Deep-Compression-like preset: much smaller, a little less accurate.
    session.keys(&["4"]);
    let tuned = session.wait_for("the preset's figures", Duration::from_secs(90), |s| {
        s.contains("preset: Deep-Compression-like")
            && figure(s, "size").is_some_and(|f| f != dense_size && !f.contains('…'))
            && s.contains("smaller")
            && figure(s, "latency").is_some_and(|f| !f.contains('…'))
            && s.contains("idle")
    });
    assert!(tuned.contains("codebook6"), "{tuned}");
    assert!(tuned.contains("l1 92%"), "{tuned}");

    // The help screen is generated from the key table.
    session.keys(&["?"]);
    session.wait_for("the help screen", Duration::from_secs(10), |s| {
        s.contains("Keys (any key closes)") && s.contains("sensitivity sweep")
    });
    session.keys(&["Escape"]);
    session.wait_for("help to close", Duration::from_secs(10), |s| {
        !s.contains("Keys (any")
    });

    // Export through the prompt into the default directory.
    session.keys(&["e"]);
    session.wait_for("the export prompt", Duration::from_secs(10), |s| {
        s.contains("Enter: export")
    });
    session.keys(&["Enter"]);
    session.wait_for("the export", Duration::from_secs(60), |s| {
        s.contains("export: wrote")
    });

    session.keys(&["q"]);
    let start = Instant::now();
    while !done.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(&done).expect("squeeze did not exit after q");
    assert_eq!(status.trim(), "0", "squeeze exited with {status}");

    let exported: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .expect("export directory")
        .flatten()
        .collect();
    assert_eq!(exported.len(), 1, "one export directory");
    for f in ["recipe.toml", "model.safetensors", "measurement.json"] {
        assert!(exported[0].path().join(f).exists(), "{f} missing");
    }

    let lines = std::fs::read_to_string(&journal).expect("journal");
    let points = lines
        .lines()
        .filter(|l| l.contains("\"type\":\"point\""))
        .count();
    // Dense and the preset, each at three stages.
    assert!(points >= 6, "{points} points journaled:\n{lines}");
}
