//! An example in the `--help` of every command, kept in one table so that a test can check
//! that no command lacks one: each leaf command gets its own line, each command with
//! subcommands gets its children's, and `portcullis --help` the first steps.

use clap::{CommandFactory, FromArgMatches};

use super::Cli;

/// `(command path, example)`; the path is the subcommand names below `portcullis`.
const EXAMPLES: &[(&str, &str)] = &[
    ("serve", "portcullis serve --config /etc/portcullis/portcullis.toml"),
    ("init", "portcullis init --data-dir /var/lib/portcullis"),
    (
        "bootstrap",
        "portcullis bootstrap --data-dir /var/lib/portcullis --admin-user root",
    ),
    (
        "users create",
        "portcullis users create --data-dir /var/lib/portcullis --workspace default alice",
    ),
    (
        "users list",
        "portcullis users list --data-dir /var/lib/portcullis --workspace default",
    ),
    ("users get", "portcullis users get --data-dir /var/lib/portcullis default/alice"),
    (
        "users update",
        "portcullis users update --data-dir /var/lib/portcullis default/alice --display-name 'Alice A.'",
    ),
    ("users disable", "portcullis users disable --data-dir /var/lib/portcullis default/alice"),
    ("users enable", "portcullis users enable --data-dir /var/lib/portcullis default/alice"),
    ("users delete", "portcullis users delete --data-dir /var/lib/portcullis default/alice"),
    (
        "users reset-password",
        "portcullis users reset-password --data-dir /var/lib/portcullis default/alice",
    ),
    (
        "roles grant",
        "portcullis roles grant --data-dir /var/lib/portcullis user:default/alice reader",
    ),
    ("roles revoke", "portcullis roles revoke --data-dir /var/lib/portcullis rb_0123456789"),
    (
        "roles list",
        "portcullis roles list --data-dir /var/lib/portcullis --subject user:default/alice",
    ),
    (
        "keys create",
        "portcullis keys create --data-dir /var/lib/portcullis --name orders-client --scopes orders.read --expires 90d",
    ),
    ("keys list", "portcullis keys list --data-dir /var/lib/portcullis --workspace default"),
    ("keys revoke", "portcullis keys revoke --data-dir /var/lib/portcullis k7f3a9c2d1"),
    (
        "keys rotate",
        "portcullis keys rotate --data-dir /var/lib/portcullis k7f3a9c2d1 --overlap 24h",
    ),
    (
        "pairings list",
        "portcullis pairings list --config /etc/portcullis/portcullis.toml --pending",
    ),
    (
        "pairings approve",
        "portcullis pairings approve --config /etc/portcullis/portcullis.toml K7QX-3MNP",
    ),
    (
        "pairings deny",
        "portcullis pairings deny --config /etc/portcullis/portcullis.toml K7QX-3MNP",
    ),
    (
        "pairings revoke",
        "portcullis pairings revoke --config /etc/portcullis/portcullis.toml orders/orders-1",
    ),
    (
        "services list",
        "portcullis services list --gateway http://127.0.0.1:8080 --json",
    ),
    (
        "sessions list",
        "portcullis sessions list --gateway http://127.0.0.1:8080 --all --state faulted",
    ),
    (
        "sessions get",
        "portcullis sessions get --gateway http://127.0.0.1:8080 gw-1.0123456789abcdef0123456789abcdef",
    ),
    (
        "sessions close",
        "portcullis sessions close --gateway http://127.0.0.1:8080 gw-1.0123456789abcdef0123456789abcdef",
    ),
    ("workspaces create", "portcullis workspaces create --data-dir /var/lib/portcullis team-a"),
    ("workspaces list", "portcullis workspaces list --data-dir /var/lib/portcullis --json"),
    ("workspaces get", "portcullis workspaces get --data-dir /var/lib/portcullis team-a"),
    (
        "workspaces update",
        "portcullis workspaces update --data-dir /var/lib/portcullis team-a --rename team-b",
    ),
    ("workspaces disable", "portcullis workspaces disable --data-dir /var/lib/portcullis team-a"),
    ("workspaces enable", "portcullis workspaces enable --data-dir /var/lib/portcullis team-a"),
    ("audit list", "portcullis audit list --data-dir /var/lib/portcullis --limit 20"),
    ("signing-keys list", "portcullis signing-keys list --config portcullis.toml"),
    ("signing-keys rotate", "portcullis signing-keys rotate --config portcullis.toml"),
    (
        "login",
        "TOKEN=$(portcullis login --gateway http://127.0.0.1:8080 --username alice)",
    ),
    ("demo", "portcullis demo --data-dir /tmp/portcullis-demo"),
    ("check-config", "portcullis check-config portcullis.toml"),
    ("config show", "portcullis config show --config portcullis.toml"),
    (
        "hash-token",
        "portcullis hash-token < /run/secrets/orders.token",
    ),
];

/// What `portcullis --help` shows after the commands.
const FIRST_STEPS: &str = "Examples:
  portcullis demo                                  # a gateway with a service linked, to try
  portcullis check-config portcullis.toml          # every problem, with its key path
  portcullis serve --config portcullis.toml";

fn examples_under(prefix: &str) -> Vec<&'static str> {
    EXAMPLES
        .iter()
        .filter(|(path, _)| {
            prefix.is_empty() || *path == prefix || path.starts_with(&format!("{prefix} "))
        })
        .map(|(_, e)| *e)
        .collect()
}

fn with_examples(mut cmd: clap::Command, path: &str) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        let child = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |c| with_examples(c, &child));
    }
    if path.is_empty() {
        return cmd.after_help(FIRST_STEPS);
    }
    let lines = examples_under(path);
    if lines.is_empty() {
        return cmd;
    }
    let title = if lines.len() == 1 {
        "Example"
    } else {
        "Examples"
    };
    let body: Vec<String> = lines.iter().map(|l| format!("  {l}")).collect();
    cmd.after_help(format!("{title}:\n{}", body.join("\n")))
}

/// The command-line grammar with its examples.
pub fn command() -> clap::Command {
    with_examples(Cli::command(), "")
}

/// Parse the process's arguments (exiting with clap's message and code 2 on bad usage).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let subs: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help" && !c.is_hide_set())
            .collect();
        if subs.is_empty() && !path.is_empty() {
            out.push(path.to_string());
        }
        for c in subs {
            let p = if path.is_empty() {
                c.get_name().to_string()
            } else {
                format!("{path} {}", c.get_name())
            };
            leaves(c, &p, out);
        }
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let mut all = Vec::new();
        leaves(&Cli::command(), "", &mut all);
        let missing: Vec<&String> = all
            .iter()
            .filter(|p| !EXAMPLES.iter().any(|(e, _)| e == p))
            .collect();
        assert!(
            missing.is_empty(),
            "commands without an example: {missing:?}"
        );
        let stale: Vec<&str> = EXAMPLES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !all.iter().any(|a| a == p))
            .collect();
        assert!(stale.is_empty(), "examples of no command: {stale:?}");
        // And each shows in `--help`, parents listing their children's.
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("keys")
            .unwrap()
            .find_subcommand_mut("revoke")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("Example:\n  portcullis keys revoke"),
            "{help}"
        );
        let help = cmd
            .find_subcommand_mut("keys")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("Examples:\n  portcullis keys create"),
            "{help}"
        );
        assert!(command()
            .render_long_help()
            .to_string()
            .contains("portcullis demo"));
    }

    #[test]
    fn every_example_parses() {
        for (path, example) in EXAMPLES {
            let line = example.split(" # ").next().unwrap();
            let line = line
                .strip_prefix("TOKEN=$(")
                .and_then(|l| l.strip_suffix(')'))
                .unwrap_or(line);
            let line = line.split(" < ").next().unwrap();
            let args: Vec<String> = shell_split(line);
            assert_eq!(args[0], "portcullis", "{path}");
            if let Err(e) = command().try_get_matches_from(&args) {
                panic!("{path}: `{example}` does not parse: {e}");
            }
        }
    }

    /// Words of a line with single quotes, as a shell splits the examples above.
    fn shell_split(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }
}
