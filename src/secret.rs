//! Secrets named in the configuration (`env:NAME`, `file:PATH` or a literal), resolved into
//! values that never print. A leaf beside `config`, used by ingest (route secrets) and sinks.

use std::fmt;

use std::collections::BTreeMap;

/// Where the environment is read from (the configuration's environment layer, `env:`
/// references); a map, so tests need not touch the process environment.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment (an empty variable counts as unset).
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// A secret value with a printable label saying where it came from (never the value).
#[derive(Clone)]
pub struct Secret {
    pub label: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, ********)", self.label)
    }
}

/// Why a secret reference names no usable value; says which variable or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("secret file {path} cannot be read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("secret {0} is empty")]
    Empty(String),
}

/// Resolves a secret reference (`env:NAME`, `file:PATH` or a literal) into one or more secrets.
///
/// `env:` values are split on commas (several secrets during rotation); `file:` contents are
/// split into lines. Errors name the variable or file, never a value.
pub fn resolve_secret_ref(
    reference: &str,
    env: &dyn EnvSource,
) -> Result<Vec<Secret>, SecretError> {
    let (source, values): (String, Vec<String>) = if let Some(name) = reference.strip_prefix("env:")
    {
        let v = env
            .get(name)
            .ok_or_else(|| SecretError::Unset(name.to_string()))?;
        (
            name.to_string(),
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else if let Some(path) = reference.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
            path: path.to_string(),
            source,
        })?;
        (
            format!("file:{path}"),
            text.lines()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else {
        ("literal".to_string(), vec![reference.to_string()])
    };
    if values.is_empty() {
        return Err(SecretError::Empty(source));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Secret {
            label: format!("{source}[{i}]"),
            value: v.into_bytes(),
        })
        .collect())
}

/// A URL as it may be shown (logs, stored errors, `check-config`): the user-info (`user:pass@`)
/// and the value of every query parameter (`?token=…`) masked, the rest kept so the operator
/// can still tell which endpoint it is.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The authority ends at the first `/`, `?` or `#`.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => authority.to_string(),
    };
    let (path, query_and_fragment) = match tail.split_once('?') {
        Some((path, q)) => (path, Some(q)),
        None => (tail, None),
    };
    let mut out = match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    };
    if let Some(q) = query_and_fragment {
        let (query, fragment) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=****"),
                None => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&masked.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

/// Defines a configuration string type whose `Debug`, `Display` and `Serialize` show only
/// `$shown(&inner)`; `expose` gives the real value to the code that uses it.
macro_rules! guarded_string {
    ($(#[$doc:meta])* $name:ident, $shown:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The real value, for the code that connects, signs or compares with it.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// What may be shown: in logs, errors, `check-config`.
            pub fn shown(&self) -> String {
                let show: fn(&str) -> String = $shown;
                show(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.shown())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.shown())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.shown())
            }
        }
    };
}

const MASK: &str = "********";

guarded_string!(
    /// A secret as the configuration names it: a reference (`env:NAME`, `file:PATH`), shown as
    /// written, or a literal value, never shown. [`SecretRef::resolve`] gives the values.
    SecretRef,
    |s| {
        if s.starts_with("env:") || s.starts_with("file:") {
            s.to_string()
        } else {
            MASK.to_string()
        }
    }
);

guarded_string!(
    /// A secret value itself (the admin token): never shown.
    SecretString,
    |_| MASK.to_string()
);

guarded_string!(
    /// A URL that may carry credentials (`user:pass@`, `?token=…`): shown through [`mask_url`].
    SecretUrl,
    mask_url
);

impl SecretRef {
    /// The values it names (see [`resolve_secret_ref`]).
    pub fn resolve(&self, env: &dyn EnvSource) -> Result<Vec<Secret>, SecretError> {
        resolve_secret_ref(&self.0, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_secrets_print_masked_whatever_prints_them() {
        let literal = SecretRef::from("hunter2");
        let reference = SecretRef::from("env:HOOK_SECRET");
        let token = SecretString::from("t0ken");
        let url = SecretUrl::from("postgres://app:pw@db:5432/x?password=pw2");
        let shown = [
            format!("{literal:?} {literal} {reference:?} {reference}"),
            format!("{token:?} {token}"),
            format!("{url:?} {url}"),
            serde_json::to_string(&(&literal, &reference, &token, &url)).expect("json"),
        ]
        .join("\n");
        for secret in ["hunter2", "t0ken", "pw", "pw2"] {
            assert!(
                !shown.contains(&format!("{secret}\"")),
                "{secret} in {shown}"
            );
        }
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken") && !shown.contains(":pw@"));
        assert!(
            shown.contains("env:HOOK_SECRET"),
            "references show: {shown}"
        );
        assert!(
            shown.contains("db:5432"),
            "the URL keeps its place: {shown}"
        );
        assert_eq!(literal.expose(), "hunter2");
        assert_eq!(url.expose(), "postgres://app:pw@db:5432/x?password=pw2");
    }

    #[test]
    fn urls_lose_their_credentials_and_keep_their_place() {
        assert_eq!(
            mask_url("http://u:PASS@127.0.0.1:1/in?token=T&x=1"),
            "http://****@127.0.0.1:1/in?token=****&x=****"
        );
        assert_eq!(
            mask_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://****@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            mask_url("https://api.example.com/v1/hook"),
            "https://api.example.com/v1/hook"
        );
        assert_eq!(
            mask_url("redis://:pw@h:6379?db=2#x"),
            "redis://****@h:6379?db=****#x"
        );
        // An `@` in the path is not user-info.
        assert_eq!(mask_url("http://h/a@b"), "http://h/a@b");
    }
}
