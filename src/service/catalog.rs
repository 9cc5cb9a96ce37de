//! The libraries a run can import, read from the root filesystem (never hard-coded), and the check of a request's `libraries`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ServiceError;

/// Written into the tree by scripts/build-rootfs.sh.
const LIBRARIES_JSON: &str = "usr/local/share/nsbox/libraries.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// The tree's Python version.
    pub python: String,
    /// Installed distributions and their versions, by canonical (PEP 503) name.
    pub libraries: BTreeMap<String, String>,
    /// Standard-library modules, which any run may import.
    #[serde(skip_deserializing)]
    pub standard_library: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the library list of the root filesystem: {0}")]
    Read(#[source] std::io::Error),
    #[error("parsing the library list of the root filesystem: {0}")]
    Parse(#[source] serde_json::Error),
}

pub use crate::packages::canonical;

impl Catalog {
    /// Reads the catalog of the tree at `rootfs`.
    pub fn load(rootfs: &Path) -> Result<Catalog, CatalogError> {
        let text =
            std::fs::read_to_string(rootfs.join(LIBRARIES_JSON)).map_err(CatalogError::Read)?;
        let mut catalog: Catalog = serde_json::from_str(&text).map_err(CatalogError::Parse)?;
        catalog.libraries = catalog
            .libraries
            .into_iter()
            .map(|(k, v)| (canonical(&k), v))
            .collect();
        let minor = catalog
            .python
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".");
        catalog.standard_library = standard_library(&rootfs.join(format!("usr/lib/python{minor}")));
        Ok(catalog)
    }

    /// Whether `name` (bare) is a distribution of the tree or a standard-library module.
    pub fn has(&self, name: &str) -> bool {
        self.libraries.contains_key(&canonical(name))
            || self.standard_library.iter().any(|m| m == name.trim())
    }

    /// Checks a request's `libraries`: each must be installed (or part of the standard
    /// library); the error names the unknown ones and lists what is available.
    pub fn check(&self, requested: &[String]) -> Result<(), ServiceError> {
        let unknown: Vec<&str> = requested
            .iter()
            .map(String::as_str)
            .filter(|name| {
                !self.libraries.contains_key(&canonical(name))
                    && !self.standard_library.iter().any(|m| m == name.trim())
            })
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let available: Vec<String> = self
            .libraries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        Err(ServiceError::Invalid(format!(
            "unknown libraries: {}; available: {} (and the Python {} standard library); see GET /v1/tools/code/libraries",
            unknown.join(", "),
            available.join(", "),
            self.python
        )))
    }
}

/// Top-level module names of the standard library directory of the tree.
fn standard_library(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("lib-dynload")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let module = if path.join("__init__.py").exists() {
                Some(name)
            } else {
                name.strip_suffix(".py").map(str::to_string).or_else(|| {
                    name.contains(".cpython-")
                        .then(|| name.split('.').next().unwrap_or("").to_string())
                })
            };
            names.extend(
                module.filter(|m| !m.is_empty() && !m.starts_with('_') || m == "__future__"),
            );
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog {
            python: "3.11.2".into(),
            libraries: [("numpy", "2.4.6"), ("python-dateutil", "4.0.0")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            standard_library: vec!["json".into(), "math".into()],
        }
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(canonical("Python_Dateutil"), "python-dateutil");
        assert_eq!(canonical("a.-_b"), "a-b");
    }

    #[test]
    fn installed_and_standard_libraries_pass_and_unknown_ones_are_named() {
        let c = catalog();
        assert!(c
            .check(&["NumPy".into(), "python_dateutil".into(), "json".into()])
            .is_ok());
        let err = c.check(&["numpy".into(), "tensorflow".into()]).unwrap_err();
        let ServiceError::Invalid(message) = err else {
            panic!("an unknown library is invalid input, got {err:?}")
        };
        assert!(
            message.contains("unknown libraries: tensorflow"),
            "{message}"
        );
        assert!(message.contains("numpy 2.4.6"), "{message}");
    }

    #[test]
    fn the_standard_library_is_read_from_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("json.py"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("email")).unwrap();
        std::fs::write(dir.path().join("email/__init__.py"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("lib-dynload")).unwrap();
        std::fs::write(
            dir.path()
                .join("lib-dynload/math.cpython-311-x86_64-linux-gnu.so"),
            "",
        )
        .unwrap();
        std::fs::write(dir.path().join("_private.py"), "").unwrap();
        assert_eq!(standard_library(dir.path()), ["email", "json", "math"]);
    }
}
