//! The `bpci` binary as a user runs it: `keys generate`, and the main job, `bpci testnet`, end
//! to end (real processes on loopback, bounded in time): its `--json` object and files, and
//! Ctrl-C while the validators start, which must leave none of them running.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One testnet at a time in this test binary: the machine's cores are shared, and two
/// testnets at once would measure each other.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bpci() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bpci"))
}

/// Processes whose command line names `dir` (the validators a testnet in `dir` started).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" node ") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn keys_generate_writes_an_owner_only_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("validator.key");
    let out = bpci()
        .args(["keys", "generate", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8(out.stdout).unwrap();
    assert!(
        public.trim().starts_with("ed25519:") && public.trim().len() == 8 + 64,
        "{public}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&path).unwrap();
    let again = bpci()
        .args(["keys", "generate", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn testnet_prints_its_results_object_and_writes_its_files() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = bpci()
        .args([
            "testnet",
            "--validators",
            "4",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--rate",
            "2000",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["offered_tps"].as_f64(), Some(2000.0));
    // Everything offered committed (a bound on progress, not on speed).
    assert_eq!(v["committed"], v["sent"], "{v}");
    let (p50, p99) = (
        v["latency_ms"]["p50"].as_f64().unwrap(),
        v["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{v}");
    assert_eq!(v["persist_failures"].as_u64(), Some(0), "{v}");
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0, "{v}");
    assert_eq!(v["peak_rss_mb_per_validator"].as_array().unwrap().len(), 4);
    assert_eq!(v["lost"].as_u64(), Some(0), "{v}");
    // The same object on disk, and the plot beside it.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(on_disk["committed"], v["committed"]);
    let svg = std::fs::read_to_string(dir.path().join("latency.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("50%"), "{svg}");
    // The stored chains were compared after the run.
    assert_eq!(v["chain"]["identical"].as_bool(), Some(true), "{v}");
    assert_eq!(v["chain"]["committed_twice"].as_u64(), Some(0), "{v}");
    // Every validator it started is gone.
    assert!(processes_under(dir.path()).is_empty());
}

/// `--faults` with every kind of fault, under load: each is applied and reported with its
/// recovery, the client loses nothing and commits nothing twice, the stored chains are
/// identical, and the timeline plot marks the faults.
/// The last lines of each validator's log under `dir` (for a failure's message), and the
/// directory kept under `target/` for a look afterwards.
fn logs_of(dir: &Path) -> String {
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("failed-faults-run");
    let _ = std::fs::remove_dir_all(&kept);
    let _ = Command::new("cp").arg("-r").arg(dir).arg(&kept).status();
    let mut out = format!("(run directory copied to {})\n", kept.display());
    for i in 0..4 {
        let log =
            std::fs::read_to_string(dir.join(format!("validator-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str(&format!("--- validator-{i}.log (last 25 lines)\n"));
        for l in &lines[lines.len().saturating_sub(25)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn testnet_applies_every_kind_of_fault_and_loses_nothing() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let schedule =
        "pause:1@2s+3s,kill:2@6s+1s,kill-leader@9s+1s,stop-all:term@12s+2s,stop-all:kill@16s+2s";
    let out = bpci()
        .args([
            "testnet",
            "--duration",
            "20s",
            "--warmup",
            "0s",
            "--rate",
            "2000",
            "--faults",
            schedule,
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["lost", "committed_twice", "unanswered"] {
        if v[key].as_u64() != Some(0) {
            panic!("{key}: {v}\n{}", logs_of(dir.path()));
        }
    }
    assert_eq!(v["committed"], v["sent"], "{v}");
    assert_eq!(v["chain"]["identical"].as_bool(), Some(true), "{v}");
    assert_eq!(v["chain"]["committed_twice"].as_u64(), Some(0), "{v}");
    let faults = v["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 5, "{v}");
    for f in faults {
        assert!(f["ended_s"].as_f64().is_some(), "{f}");
        assert!(f["recovery_ms"].as_u64().is_some(), "no commit after {f}");
    }
    let timeline = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    for label in [
        "pause:1",
        "kill:2",
        "kill-leader",
        "stop-all:term",
        "stop-all:kill",
    ] {
        assert!(timeline.contains(label), "{label} not marked");
    }
    assert!(processes_under(dir.path()).is_empty());
}

#[test]
fn ctrl_c_while_validators_start_stops_every_one_of_them() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut child = bpci()
        .args(["testnet", "--validators", "4", "--duration", "30s", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the validators run (their logs exist), before they are all connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_under(dir.path()).len() < 4 {
        assert!(Instant::now() < deadline, "validators did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "bpci testnet did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // Usually still starting (an error naming the interruption); if the validators were
    // already connected, the load stops early and the summary follows. Both stop them.
    if stderr.contains("interrupted") {
        assert!(!status.success());
    }
    assert!(
        processes_under(dir.path()).is_empty(),
        "validators left running; stderr: {stderr}"
    );
}

/// A run whose blocks would not fit on the disk is refused before any validator starts, with a
/// message naming the directory and the flags to change.
#[test]
fn testnet_refuses_a_run_the_disk_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    // 10M tx/s of 64 KiB for a day: far more than any disk here.
    let out = bpci()
        .args(["testnet", "--rate", "10000000", "--tx-size", "65536"])
        .args(["--duration", "86400s", "--dir"])
        .arg(&net)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dir") && err.contains("GiB free") && err.contains("lower --rate"),
        "{err}"
    );
    assert!(processes_under(&net).is_empty());
    assert!(!net.join("data-0").exists());
}
