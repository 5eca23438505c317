//! Configuration layering shared by both binaries: documented defaults (a TOML
//! text), then a user file, then environment overrides `PREFIX<SECTION>__<KEY>`.
//!
//! [`load`] is pure (callers pass the file's text and their environment, so
//! tests never touch the real environment); [`load_file`] also reads the file.
//! Errors name the offending key.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown config key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("invalid value for config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// A configuration problem; binaries exit with 64 on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// [`load`] with the user file read from `file`.
pub fn load_file<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&std::path::Path>,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let text = match file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    let origin = file.map(|p| format!("file {}", p.display()));
    Ok(load(
        defaults,
        origin.as_deref().zip(text.as_deref()),
        prefix,
        env,
    )?)
}

/// Merge `defaults`, the optional `(origin, text)` file and the `env` pairs
/// whose names start with `prefix`, then deserialize into `T`.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    file: Option<(&str, &str)>,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, LayerError> {
    let mut table: toml::Table =
        defaults
            .parse()
            .map_err(|e: toml::de::Error| LayerError::Syntax {
                origin: "built-in defaults".into(),
                message: e.to_string(),
            })?;
    if let Some((origin, text)) = file {
        let user: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| LayerError::Syntax {
                origin: origin.into(),
                message: e.to_string(),
            })?;
        merge(&mut table, user, "", origin)?;
    }
    // Later values win; a BTreeMap keeps the outcome independent of env order.
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(prefix) {
            overrides.insert(rest.to_owned(), value);
        }
    }
    for (rest, value) in overrides {
        // PREFIX variables without a section separator are not config keys.
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let dotted = format!("{section}.{key}");
        let origin = format!("environment variable {prefix}{rest}");
        let Some(toml::Value::Table(sec)) = table.get_mut(&section) else {
            return Err(LayerError::UnknownKey {
                key: dotted,
                origin,
            });
        };
        if !sec.contains_key(&key) {
            return Err(LayerError::UnknownKey {
                key: dotted,
                origin,
            });
        }
        sec.insert(key, parse_env_value(&value));
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| LayerError::Invalid {
        key: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// An environment value as TOML (numbers, booleans, arrays keep their type),
/// otherwise a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    match format!("x = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("x")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn merge(
    base: &mut toml::Table,
    user: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), LayerError> {
    for (key, value) in user {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            // An empty table in the defaults is a free-form map (its keys
            // are the operator's, checked by whoever reads it): replaced.
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) if b.is_empty() => *b = u,
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &dotted, origin)?,
            (Some(slot), v) => *slot = v,
            (None, _) => {
                return Err(LayerError::UnknownKey {
                    key: dotted,
                    origin: origin.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct C {
        a: A,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct A {
        n: u32,
        s: String,
        l: Vec<String>,
    }
    const D: &str = "[a]\nn = 1\ns = \"x\"\nl = []\n";

    fn env(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let c: C = load(
            D,
            Some(("f", "[a]\nn = 2\n")),
            "P_",
            env(&[("P_A__S", "hello world"), ("P_A__L", "[\"q\"]")]),
        )
        .unwrap();
        assert_eq!(
            c.a,
            A {
                n: 2,
                s: "hello world".into(),
                l: vec!["q".into()]
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load::<C>(D, None, "P_", env(&[("P_A__N", "many")])).unwrap_err();
        assert!(e.to_string().contains("a.n"), "{e}");
        let e = load::<C>(D, None, "P_", env(&[("P_A__ZZ", "1")])).unwrap_err();
        assert!(
            matches!(e, LayerError::UnknownKey { ref key, .. } if key == "a.zz"),
            "{e}"
        );
        let e = load::<C>(D, Some(("f.toml", "[a]\nm = 1\n")), "P_", vec![]).unwrap_err();
        assert!(
            e.to_string().contains("a.m") && e.to_string().contains("f.toml"),
            "{e}"
        );
        let e = load::<C>(D, Some(("f.toml", "[a\n")), "P_", vec![]).unwrap_err();
        assert!(matches!(e, LayerError::Syntax { .. }));
    }

    /// An empty table in the defaults takes the file's keys as they are
    /// (a free-form map); a table with keys still refuses unknown ones.
    #[test]
    fn empty_default_tables_are_free_form_maps() {
        #[derive(Debug, serde::Deserialize)]
        struct M {
            a: A,
            m: BTreeMap<String, String>,
        }
        let defaults = format!("{D}\n[m]\n");
        let c: M = load(
            &defaults,
            Some(("f.toml", "[m]\nanything = \"x\"\n")),
            "P_",
            vec![],
        )
        .unwrap();
        assert_eq!(c.m["anything"], "x");
        assert_eq!(c.a.n, 1);
        let e = load::<M>(
            &defaults,
            Some(("f.toml", "[a]\nanything = 1\n")),
            "P_",
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("a.anything"), "{e}");
    }
}
