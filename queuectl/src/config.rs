//! Where to connect: `--database-url`, `DATABASE_URL`, then the libpq
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGPASSFILE` / `~/.pgpass`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGSSLMODE`),
//! then libpq's defaults, the way `psql` resolves them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use crate::error::CliError;

/// The Debian / Ubuntu default socket directory of libpq.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Reads one environment variable, treating an empty value as unset (as libpq does).
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The effective user name of this process (libpq's default `user`).
fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy it at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(s) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return s.to_owned();
            }
        }
    }
    env("USER").unwrap_or_else(|| "postgres".into())
}

/// Builds the connection settings.
///
/// `url` (from `--database-url` or `DATABASE_URL`) may be a `postgres://` URL
/// or a libpq `key=value` string; whatever it leaves out comes from the `PG*`
/// variables, then from libpq's defaults (socket directory, port 5432, the OS
/// user, a database named like the user). A password comes from the URL,
/// `PGPASSWORD`, or the password file, in that order.
pub fn resolve(url: Option<&str>) -> Result<Config, CliError> {
    let mut config: Config = match url {
        Some(u) => u.parse().map_err(|e| CliError::usage(format!("cannot parse the database URL: {e}")))?,
        None => Config::new(),
    };

    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(hosts) => {
                for h in hosts.split(',') {
                    config.host(h.trim());
                }
            }
            None => {
                if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
                    config.host_path(DEFAULT_SOCKET_DIR);
                } else {
                    config.host("localhost");
                }
            }
        }
    }
    if config.get_ports().is_empty() {
        let port = match env("PGPORT") {
            Some(p) => {
                p.trim().parse::<u16>().map_err(|_| CliError::usage(format!("PGPORT is not a port number: {p:?}")))?
            }
            None => 5432,
        };
        config.port(port);
    }
    if config.get_user().is_none() {
        config.user(env("PGUSER").unwrap_or_else(os_user));
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_owned());
        config.dbname(db);
    }
    if config.get_application_name().is_none() {
        config.application_name(env("PGAPPNAME").unwrap_or_else(|| "queuectl".into()));
    }
    if config.get_connect_timeout().is_none() {
        let secs = env("PGCONNECT_TIMEOUT").and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(10);
        config.connect_timeout(Duration::from_secs(secs.max(2)));
    }
    if let Some(mode) = env("PGSSLMODE") {
        match mode.as_str() {
            "disable" => {
                config.ssl_mode(SslMode::Disable);
            }
            "allow" | "prefer" => {
                config.ssl_mode(SslMode::Prefer);
            }
            other => {
                return Err(CliError::usage(format!(
                    "PGSSLMODE={other}: queuectl connects without TLS (disable, allow or prefer); \
                     reach a TLS-only server through a local socket or a tunnel"
                )))
            }
        }
    }
    if matches!(config.get_ssl_mode(), SslMode::Require) {
        return Err(CliError::usage(
            "sslmode=require: queuectl connects without TLS; use sslmode=prefer or disable, or a local socket",
        ));
    }
    if config.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            config.password(pw);
        } else if let Some(pw) = pgpass_lookup(&config) {
            config.password(pw);
        }
    }
    Ok(config)
}

/// Whether the URL given on the command line carries a password (visible to
/// every user of the machine in `ps`).
pub fn url_has_password(url: &str) -> bool {
    match url.parse::<Config>() {
        Ok(c) => c.get_password().is_some(),
        Err(_) => false,
    }
}

/// The password file: `PGPASSFILE`, else `~/.pgpass`.
fn pgpass_path() -> Option<PathBuf> {
    if let Some(p) = env("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The first matching line of the password file for this host, port,
/// database and user, as libpq matches it (`*` matches anything, `localhost`
/// matches a socket connection, `\:` and `\\` are escapes). A file readable
/// by group or others is ignored with a warning, as libpq does.
fn pgpass_lookup(config: &Config) -> Option<String> {
    let path = pgpass_path()?;
    let meta = std::fs::metadata(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "queuectl: warning: password file {} has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let db = config.get_dbname().unwrap_or("").to_owned();
    let user = config.get_user().unwrap_or("").to_owned();
    pgpass_match(&text, &host, &port, &db, &user)
}

/// Matches one password file's text (split out for tests).
pub(crate) fn pgpass_match(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let want = [host, port, db, user];
        if fields[..4].iter().zip(want.iter()).all(|(f, w)| f == "*" || f == w) {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().unwrap().push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// A one-line description of where we connect (never the password), for
/// error messages and the dashboard's header.
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{}@{}:{}/{}", config.get_user().unwrap_or("?"), host, port, config.get_dbname().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_matches_like_libpq() {
        let text =
            "# comment\nother:5432:*:bob:nope\nlocalhost:25474:postgres:postgres:s\\:cret\\\\x\n*:*:*:*:fallback\n";
        assert_eq!(pgpass_match(text, "localhost", "25474", "postgres", "postgres").as_deref(), Some("s:cret\\x"));
        assert_eq!(pgpass_match(text, "db.example", "5432", "app", "app").as_deref(), Some("fallback"));
        assert_eq!(pgpass_match("a:b:c", "a", "b", "c", "d"), None);
    }

    #[test]
    fn passwords_in_urls_are_noticed() {
        assert!(url_has_password("postgres://u:secret@h/db"));
        assert!(!url_has_password("postgres://u@h/db"));
        assert!(url_has_password("host=h user=u password=x"));
    }
}
