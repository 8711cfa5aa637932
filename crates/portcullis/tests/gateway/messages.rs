//! Errors name things, through the real binary: a whole key given where a key id is expected
//! is refused without echoing it, a mistake in an environment override names the variable,
//! a host name as a listen address says an IP address is needed, `check-config` takes the file
//! as `FILE` or as `--config FILE`, an unknown workspace is an error when listing as when
//! creating, and `keys list` shows expiry.

use crate::common::process;

fn create_key_json(dir: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "keys",
        "create",
        "--data-dir",
        dir,
        "--name",
        "ci",
        "--scopes",
        "echo.read",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = process::cli(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn a_whole_key_given_for_a_key_id_is_refused_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = process::cli(&["init", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let v = create_key_json(d, &[]);
    let key = v["api_key"].as_str().unwrap();
    let id = v["key_id"].as_str().unwrap();
    let secret = key.rsplit('_').next().unwrap();
    for cmd in [
        vec!["keys", "revoke", key, "--data-dir", d],
        vec!["keys", "rotate", key, "--data-dir", d],
        vec!["keys", "revoke", key, "--data-dir", d, "--json"],
    ] {
        let (code, out, err) = process::cli(&cmd);
        assert_eq!(code, 2, "{cmd:?}: usage error: {err}");
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{cmd:?} echoed the secret: {err}"
        );
        assert!(
            err.contains(
                "that is a whole API key, not its id (not repeated here): expected a key id"
            ),
            "{err}"
        );
    }
    // The key still works: nothing was changed; its id revokes it.
    let (code, out, _) = process::cli(&["keys", "list", "--data-dir", d, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"status\":\"active\""), "{out}");
    let (code, _, err) = process::cli(&["keys", "revoke", id, "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn keys_list_shows_expiry_and_an_unknown_workspace_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(process::cli(&["init", "--data-dir", d]).0, 0);
    let v = create_key_json(d, &["--expires", "90d"]);
    let expires = v["expires_at"].as_str().expect("expires_at").to_string();
    assert!(
        expires.ends_with('Z') && expires.contains('T'),
        "ISO 8601: {expires}"
    );
    let (code, out, _) = process::cli(&["keys", "list", "--data-dir", d]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("EXPIRES"), "{out}");
    assert!(out.contains(&expires), "{out}");

    let (code, _, create_err) = process::cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--workspace",
        "nope",
        "--name",
        "x",
        "--scopes",
        "a.b",
    ]);
    assert_ne!(code, 0);
    let (code, out, list_err) =
        process::cli(&["keys", "list", "--data-dir", d, "--workspace", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        list_err, create_err,
        "listing and creating in an unknown workspace say the same"
    );
    assert!(list_err.contains("workspace nope not found"), "{list_err}");

    let (code, _, err) = process::cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--name",
        "x",
        "--scopes",
        "a.b",
        "--expires",
        "0",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--expires \"0\": must be positive (a positive duration, e.g. 90d"),
        "{err}"
    );
}

#[test]
fn check_config_takes_the_file_either_way_and_names_override_variables_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, "[ingress]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    let f = file.to_str().unwrap();
    for args in [vec!["check-config", f], vec!["check-config", "--config", f]] {
        let (code, out, err) = process::cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(out.trim(), format!("{f}: ok"));
    }

    let out = process::run(
        &["check-config", f],
        &[("PORTCULLIS_INGRES__LISTEN", "127.0.0.1:1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("ingres: unknown field `ingres`")
            && err.contains("(set by the environment variable PORTCULLIS_INGRES__LISTEN)"),
        "{err}"
    );

    std::fs::write(&file, "[ingress]\nlisten = \"localhost:8080\"\n").unwrap();
    let (code, _, err) = process::cli(&["check-config", f]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{f}: ingress.listen: expected an IP address and a port"
        )) && err.contains("host names such as localhost are not resolved"),
        "{err}"
    );
}
