//! The cargo-lambda path, checked rather than described: `cargo lambda watch`
//! runs the function against the lab (its environment from an env file, as
//! `target/debug/lab up` writes it), and `cargo lambda invoke --data-file
//! events/job-event.json` sends it the sample event, as docs/deploy.md and
//! docs/lab.md tell a developer to.
//!
//! Needs the lab's Python tools: `scripts/setup` puts cargo-lambda in `.venv`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::{Lab, ACCOUNT_A};
use serde_json::Value;

fn cargo_lambda() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/cargo-lambda");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// `cargo lambda watch` serves the function built from this checkout with the
/// lab's environment, and `cargo lambda invoke` with the sample job event
/// gets the relay's answer; the record lands in the lab's S3, written after a
/// Converse call signed as RoleA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_lambda_invoke_runs_a_sample_event_against_cargo_lambda_watch() {
    let lab = Lab::start().await.expect("lab starts");
    let dir = std::env::temp_dir().join(format!("relay-cargo-lambda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let env_file = dir.join("function.env");
    let mut env = lab.function_env();
    // Lambda sets the region; the function reads it like any other variable.
    env.push(("AWS_REGION".into(), lab::moto::REGION.into()));
    let lines: String = env
        .iter()
        // Quoted, as `lab up` writes it: session tokens hold `/`, `+` and `=`.
        .map(|(key, value)| format!("{key}=\"{value}\"\n"))
        .collect();
    std::fs::write(&env_file, lines).expect("env file");

    let port = free_port().to_string();
    let root = env!("CARGO_MANIFEST_DIR");
    let log = dir.join("watch.log");
    let log_file = std::fs::File::create(&log).expect("watch log");
    let mut watch = tokio::process::Command::new(cargo_lambda())
        .args(["lambda", "watch", "--env-file"])
        .arg(&env_file)
        .args(["--invoke-port", &port])
        .current_dir(root)
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("cargo lambda watch starts");

    // The first invoke waits for watch to build and start the function.
    let deadline = Instant::now() + Duration::from_secs(300);
    let answer = loop {
        let output = tokio::process::Command::new(cargo_lambda())
            .args([
                "lambda",
                "invoke",
                "bedrock-relay",
                "--data-file",
                "events/job-event.json",
            ])
            .args(["--invoke-port", &port])
            .current_dir(root)
            .output()
            .await
            .expect("cargo lambda invoke runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            break serde_json::from_str::<Value>(stdout.trim())
                .unwrap_or_else(|e| panic!("not the relay's answer ({e}): {stdout}"));
        }
        assert!(
            Instant::now() < deadline,
            "cargo lambda invoke kept failing: {}\ncargo lambda watch said:\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let _ = watch.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let job_id = "6f2c1f5e-2b1d-4c8e-9a57-0d3c2b9e7a11";
    assert_eq!(answer["status"], "succeeded", "{answer}");
    assert_eq!(answer["job_id"], job_id);
    let record = lab
        .record(job_id)
        .await
        .expect("s3")
        .expect("the record in the lab's S3");
    assert_eq!(record["shape"], "job-event");
    assert_eq!(record["target"]["account"], ACCOUNT_A);
    let calls = lab.bedrock.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.status == 200 && c.account.as_deref() == Some(ACCOUNT_A)),
        "a call signed in account A: {calls:?}"
    );
}
