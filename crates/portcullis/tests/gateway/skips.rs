//! Nothing is skipped silently. The store tests' PostgreSQL halves are run in a child process
//! of this test binary (one store test, `--exact`) with `PORTCULLIS_TEST_POSTGRES_URL` set three
//! ways: `off` passes and says `SKIPPED:` on stderr although the test passed; `off` under
//! `PORTCULLIS_TEST_STRICT=1` (as `.ci/run` runs) fails; a server named explicitly that does not
//! answer fails.

use portcullis::store::testing::{POSTGRES_ENV, STRICT_ENV};
use std::process::{Command, Stdio};

const TEST: &str = "store::migrations_are_versioned_and_idempotent";

fn run_store_test(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([TEST, "--exact", "--test-threads", "1"])
        .env_remove(POSTGRES_ENV)
        .env_remove(STRICT_ENV)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed") || text.contains("1 failed"),
        "{TEST} ran: {text}"
    );
    (out.status.success(), text)
}

#[test]
fn a_skipped_postgres_half_is_reported_and_fails_under_strict() {
    let (ok, out) = run_store_test(&[(POSTGRES_ENV, "off")]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "SKIPPED: {TEST}: the PostgreSQL half: {POSTGRES_ENV}=off"
        )),
        "{out}"
    );

    let (ok, out) = run_store_test(&[(POSTGRES_ENV, "off"), (STRICT_ENV, "1")]);
    assert!(!ok, "a skip under {STRICT_ENV} fails: {out}");
    assert!(
        out.contains(&format!(
            "did not run ({POSTGRES_ENV}=off), and {STRICT_ENV} is set"
        )),
        "{out}"
    );

    let (ok, out) = run_store_test(&[(POSTGRES_ENV, "postgres://postgres@127.0.0.1:1/test")]);
    assert!(!ok, "an explicit server that does not answer fails: {out}");
    assert!(
        out.contains(&format!("{POSTGRES_ENV}: cannot connect")),
        "{out}"
    );
}
