//! An optional TOML config file under the flags and MINKUBE_* variables.
//!
//! Precedence is flag > environment variable > file > built-in default. The
//! file holds the same settings as the flags, named like the flag with `_`
//! or `-` (`heartbeat_interval = "5s"`, `allow-privileged = true`); a value
//! is checked exactly as the flag's would be. Unknown keys are errors, so a
//! typo is not silently ignored.
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

/// Id of the `--config` argument every binary using this module declares.
pub const CONFIG_ID: &str = "config";

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or variable was wrong (or --help / --version was asked for).
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("cannot read config file {}: {source} (check --config / MINKUBE_CONFIG)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("config file {}: unknown setting `{key}`; known settings: {known}", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config file {}: `{key}` must be {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error("config file {}: {message}", path.display())]
    BadValue { path: PathBuf, message: String },
}

impl ConfigError {
    /// Prints the error and exits: help and version go to stdout with
    /// status 0, like clap's own `parse()`.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Args(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2);
            }
        }
    }
}

/// `<binary> config <command>`, shared by the manager and the agent.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings as TOML, each with where it came from
    /// (flag, env, file or default).
    Print,
}

/// Parsed settings plus what is needed to show where each came from.
#[derive(Debug)]
pub struct Loaded<T> {
    pub args: T,
    pub file: Option<PathBuf>,
    matches: ArgMatches,
    from_file: BTreeSet<String>,
    command: clap::Command,
}

/// Parses the process's arguments, environment and `--config` file.
pub fn load<T: CommandFactory + FromArgMatches>() -> Result<Loaded<T>, ConfigError> {
    load_from::<T>(std::env::args_os().collect())
}

/// [`load`] over the given arguments (the first is the program name).
pub fn load_from<T: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
) -> Result<Loaded<T>, ConfigError> {
    let command = T::command();
    let matches = command.clone().try_get_matches_from(argv.clone())?;
    let Some(path) = matches.get_one::<PathBuf>(CONFIG_ID).cloned() else {
        let args = T::from_arg_matches(&matches)?;
        return Ok(Loaded {
            args,
            file: None,
            matches,
            from_file: BTreeSet::new(),
            command,
        });
    };
    let table = read_table(&path)?;
    let (extra, from_file) = file_arguments(&command, &matches, &table, &path)?;
    // The file's values go right after the program name, so they also apply
    // when a subcommand follows; only settings no flag or variable gave are
    // added, so nothing is given twice.
    let mut full = Vec::with_capacity(argv.len() + extra.len());
    full.extend(argv.first().cloned());
    full.extend(extra);
    full.extend(argv.into_iter().skip(1));
    let matches =
        command
            .clone()
            .try_get_matches_from(full)
            .map_err(|e| ConfigError::BadValue {
                path: path.clone(),
                message: first_line(&e.to_string()),
            })?;
    let args = T::from_arg_matches(&matches)?;
    Ok(Loaded {
        args,
        file: Some(path),
        matches,
        from_file,
        command,
    })
}

fn first_line(s: &str) -> String {
    let s = s.trim_start_matches("error: ");
    s.lines().next().unwrap_or(s).trim().to_string()
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
}

/// The settings a file may hold: every top-level option but help, version
/// and --config itself.
fn settings(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| {
        let id = a.get_id().as_str();
        a.get_long().is_some() && !matches!(id, "help" | "version" | CONFIG_ID)
    })
}

fn key_of(arg: &Arg) -> String {
    arg.get_id().as_str().replace('-', "_")
}

fn find<'a>(command: &'a clap::Command, key: &str) -> Option<&'a Arg> {
    let key = key.replace('-', "_");
    settings(command)
        .find(|a| key_of(a) == key || a.get_long().is_some_and(|l| l.replace('-', "_") == key))
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn file_arguments(
    command: &clap::Command,
    matches: &ArgMatches,
    table: &toml::Table,
    path: &Path,
) -> Result<(Vec<OsString>, BTreeSet<String>), ConfigError> {
    let mut extra = Vec::new();
    let mut used = BTreeSet::new();
    for (key, value) in table {
        let Some(arg) = find(command, key) else {
            let known: Vec<String> = settings(command).map(key_of).collect();
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.to_string(),
                known: known.join(", "),
            });
        };
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let wrong = |expected| ConfigError::WrongType {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected,
        };
        if is_flag(arg) {
            let on = value.as_bool().ok_or_else(|| wrong("true or false"))?;
            if on {
                extra.push(OsString::from(format!("--{long}")));
            }
        } else {
            let values = match value {
                toml::Value::Array(items) => items.iter().collect(),
                single => vec![single],
            };
            for v in values {
                let text = scalar(v).ok_or_else(|| wrong("a string, number or list of them"))?;
                extra.push(OsString::from(format!("--{long}={text}")));
            }
        }
        used.insert(key_of(arg));
    }
    Ok((extra, used))
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<T> Loaded<T> {
    /// The effective settings as a TOML file (usable as `--config`), each
    /// with a comment saying where its value came from. Secrets are hidden.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# effective configuration of {} (flag > MINKUBE_* variable > file > default)\n",
            self.command.get_name()
        ));
        match &self.file {
            Some(p) => out.push_str(&format!("# config file: {}\n", p.display())),
            None => out.push_str("# config file: none (--config / MINKUBE_CONFIG)\n"),
        }
        for arg in settings(&self.command) {
            let key = key_of(arg);
            let id = arg.get_id().as_str();
            let source = self.source(arg);
            let raw: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if arg.is_hide_env_values_set() && !raw.is_empty() {
                out.push_str(&format!("# {key} = (set, hidden)  # {source}\n"));
                continue;
            }
            let multiple = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                || matches!(arg.get_action(), ArgAction::Append);
            let line = if is_flag(arg) {
                let on = raw.first().is_some_and(|v| v == "true");
                format!("{key} = {on}")
            } else if multiple {
                let items: Vec<String> = raw.iter().map(|v| render_value(v)).collect();
                format!("{key} = [{}]", items.join(", "))
            } else if let Some(v) = raw.first() {
                format!("{key} = {}", render_value(v))
            } else {
                out.push_str(&format!("# {key} is not set  # {source}\n"));
                continue;
            };
            out.push_str(&format!("{line}  # {source}\n"));
        }
        out
    }

    fn source(&self, arg: &Arg) -> String {
        let id = arg.get_id().as_str();
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) if self.from_file.contains(&key_of(arg)) => {
                "file".to_string()
            }
            Some(ValueSource::CommandLine) => "flag".to_string(),
            Some(ValueSource::EnvVariable) => match arg.get_env() {
                Some(name) => format!("env {}", name.to_string_lossy()),
                None => "env".to_string(),
            },
            _ => "default".to_string(),
        }
    }
}

/// Settings of `T` an example env file or TOML file does not mention (each
/// must appear, at least commented out), and example TOML values that do
/// not load: for tests keeping `deploy/config/` complete.
pub fn undocumented<T: CommandFactory + FromArgMatches>(
    env_file: &str,
    toml_file: &str,
) -> Vec<String> {
    let command = T::command();
    let mut missing = Vec::new();
    for arg in settings(&command) {
        if let Some(var) = arg.get_env() {
            let var = var.to_string_lossy();
            if !env_file
                .lines()
                .any(|l| l.trim_start_matches('#').starts_with(&format!("{var}=")))
            {
                missing.push(format!("{var} in the env file"));
            }
        }
        let key = key_of(arg);
        if !toml_file.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        }) {
            missing.push(format!("{key} in the TOML file"));
        }
    }
    // Uncommented, the example values must load as they are.
    let uncommented: String = toml_file
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                && !l.contains("...")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = std::env::temp_dir().join(format!("minkube-config-check-{}", std::process::id()));
    let path = dir.with_extension("toml");
    if let Err(e) = std::fs::write(&path, uncommented) {
        missing.push(format!("cannot write {}: {e}", path.display()));
        return missing;
    }
    let argv = vec![
        OsString::from(command.get_name()),
        OsString::from("--config"),
        path.clone().into(),
    ];
    if let Err(e) = load_from::<T>(argv) {
        missing.push(format!("example values do not load: {e}"));
    }
    let _ = std::fs::remove_file(&path);
    missing
}

/// Integers bare, everything else as a TOML string.
fn render_value(v: &str) -> String {
    match v.parse::<i64>() {
        Ok(i) if i.to_string() == v => v.to_string(),
        _ => toml::Value::String(v.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct T {
        #[arg(long, env = "MINKUBE_CFGTEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "MINKUBE_CFGTEST_PORT", default_value_t = 7070)]
        port: u16,
        #[arg(long, env = "MINKUBE_CFGTEST_HOST", default_value = "127.0.0.1")]
        host: String,
        #[arg(long, env = "MINKUBE_CFGTEST_INSECURE")]
        insecure: bool,
        #[arg(long = "label", env = "MINKUBE_CFGTEST_LABELS", value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long, env = "MINKUBE_CFGTEST_TOKEN", hide_env_values = true)]
        token: Option<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(args: &[&str]) -> Result<Loaded<T>, ConfigError> {
        load_from::<T>(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn without_a_file_flags_and_defaults_apply() {
        let l = load(&["t", "--port", "1"]).unwrap();
        assert_eq!(l.args.port, 1);
        assert_eq!(l.args.host, "127.0.0.1");
        assert!(l.file.is_none());
    }

    #[test]
    fn the_file_fills_what_no_flag_gives_and_a_flag_wins() {
        let f =
            file("port = 9000\nhost = \"0.0.0.0\"\ninsecure = true\nlabel = [\"a=1\", \"b=2\"]\n");
        let p = f.path().to_str().unwrap();
        let l = load(&["t", "--config", p]).unwrap();
        assert_eq!(l.args.port, 9000);
        assert_eq!(l.args.host, "0.0.0.0");
        assert!(l.args.insecure);
        assert_eq!(l.args.labels, vec!["a=1", "b=2"]);
        let l = load(&["t", "--port", "1", "--config", p]).unwrap();
        assert_eq!(l.args.port, 1, "flag beats file");
        assert_eq!(l.args.host, "0.0.0.0");
        let shown = l.render();
        assert!(shown.contains("port = 1  # flag"), "{shown}");
        assert!(shown.contains("host = \"0.0.0.0\"  # file"), "{shown}");
        assert!(
            shown.contains("labels = [\"a=1\", \"b=2\"]  # file"),
            "{shown}"
        );
        assert!(shown.contains("# token is not set  # default"), "{shown}");
        // What is printed reads back as the same settings.
        let again = file(&shown);
        let l2 = load(&["t", "--config", again.path().to_str().unwrap()]).unwrap();
        assert_eq!((l2.args.port, l2.args.host), (1, "0.0.0.0".to_string()));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            ("prot = 1\n", "unknown setting `prot`"),
            ("port = \"x\"\n", "invalid value 'x'"),
            ("insecure = \"yes\"\n", "`insecure` must be true or false"),
            ("port = {a = 1}\n", "`port` must be a string"),
            ("port = \n", "not valid TOML"),
        ];
        for (text, want) in cases {
            let f = file(text);
            let err = load(&["t", "--config", f.path().to_str().unwrap()])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(f.path().to_str().unwrap()), "{err}");
        }
        let err = load(&["t", "--config", "/nonexistent/minkube.toml"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }

    #[test]
    fn render_hides_secrets_and_quotes_strings() {
        let l = load(&["t", "--token", "s3cret", "--host", "h"]).unwrap();
        let shown = l.render();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("# token = (set, hidden)  # flag"), "{shown}");
        assert!(shown.contains("host = \"h\"  # flag"), "{shown}");
        assert!(shown.contains("insecure = false  # default"), "{shown}");
        assert_eq!(render_value("-5"), "-5");
        assert_eq!(render_value("5s"), "\"5s\"");
        assert_eq!(render_value("007"), "\"007\"");
    }

    #[test]
    fn a_variable_beats_the_file() {
        // The only test that sets this variable.
        std::env::set_var("MINKUBE_CFGTEST_HOST", "from-env");
        let f = file("host = \"from-file\"\nport = 1\n");
        let l = load(&["t", "--config", f.path().to_str().unwrap()]).unwrap();
        std::env::remove_var("MINKUBE_CFGTEST_HOST");
        assert_eq!(l.args.host, "from-env");
        assert_eq!(l.args.port, 1);
        let shown = l.render();
        assert!(
            shown.contains("host = \"from-env\"  # env MINKUBE_CFGTEST_HOST"),
            "{shown}"
        );
    }
}
