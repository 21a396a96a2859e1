//! The `ringkv` binary's argument handling. (Being an integration test of this package also
//! makes `cargo test --workspace` build the binary that the `ringkv-tests` harness runs.)

use std::process::Command;

fn ringkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
}

#[test]
fn help_lists_the_commands() {
    let out = ringkv().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["start", "ping", "put", "get", "delete", "load", "bench"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn invalid_settings_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringkv()
        .args([
            "start",
            "--partitions",
            "48",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("power of two"), "{err}");
    assert!(
        !dir.path().join("d").exists(),
        "nothing is created for a refused config"
    );
}

#[test]
fn a_client_command_without_a_node_fails_clearly() {
    // Port 1 on loopback: nothing listens there.
    let out = ringkv()
        .args(["ping", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:1"));
}

#[test]
fn client_flags_are_taken_before_or_after_the_subcommand() {
    // Port 1 on loopback: nothing listens there, so every form must try that address.
    for args in [
        &["--addr", "127.0.0.1:1", "ping"][..],
        &["ping", "--addr", "127.0.0.1:1"],
        &["--addr", "127.0.0.1:1", "get", "b", "k"],
        &["--addr", "127.0.0.1:1", "cluster", "status"],
        &["cluster", "status", "--addr", "127.0.0.1:1"],
    ] {
        let out = ringkv().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("connecting to 127.0.0.1:1"), "{args:?}: {err}");
    }
    // After the subcommand wins over before it.
    let out = ringkv()
        .args(["--addr", "127.0.0.1:2", "ping", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:1"));
}
