//! The cache of installed package sets on the host: `sites/<key>/` (a set's tree, keyed by what it holds, the Python version and the platform), `sets/<key>.json` (what it holds), `specs/<hash of a request's libraries>` (the set those libraries got), and `staging/` for sets being written.
//!
//! Nothing here reads a path a sandbox made: the installer's files arrive as (path, bytes)
//! in its run's outcome, and the server creates every directory and file of the set itself,
//! in a fresh staging directory, refusing any path that is not plain relative components.
//! No link is ever made, so none can be followed.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Installed, Requirement};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the package cache {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing a package set: {0}")]
    Write(#[source] std::io::Error),
    #[error("the installer sent a path that is not plain relative components: {0:?}")]
    Path(String),
    #[error("the installer sent no file")]
    Empty,
}

/// The cache directory, made at start.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Folded into every key: the tree's Python version and this machine's platform.
    python: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mkdir(path: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Store {
    /// Opens (and creates) the cache at `root`; stale staging directories of an earlier
    /// server are removed. Directories are 0755: runs read their set as their own ids.
    pub fn open(root: &Path, python: &str) -> Result<Store, StoreError> {
        for dir in [
            root.to_path_buf(),
            root.join("sites"),
            root.join("sets"),
            root.join("specs"),
        ] {
            mkdir(&dir)?;
            let _ = fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        }
        let _ = fs::remove_dir_all(root.join("staging"));
        mkdir(&root.join("staging"))?;
        Ok(Store {
            root: root.to_path_buf(),
            python: python.to_string(),
        })
    }

    /// The directory the spawner gives templates and cold runs: one set per entry.
    pub fn sites(&self) -> PathBuf {
        self.root.join("sites")
    }

    fn platform() -> String {
        format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
    }

    /// The key of a request's libraries (sorted, so their order does not matter).
    pub fn spec_key(&self, index_url: &str, requirements: &[Requirement]) -> String {
        let mut specs: Vec<String> = requirements.iter().map(Requirement::spec).collect();
        specs.sort();
        specs.dedup();
        let mut h = Sha256::new();
        for part in [&self.python, &Self::platform(), index_url] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for s in specs {
            h.update(s.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize())[..32].to_string()
    }

    /// The key of a set: what it holds (names, versions, wheel hashes), the Python version
    /// and the platform.
    pub fn set_key(&self, installed: &[Installed]) -> String {
        let mut items: Vec<&Installed> = installed.iter().collect();
        items.sort();
        let mut h = Sha256::new();
        for part in [&self.python, &Self::platform()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for i in items {
            for part in [&i.name, &i.version, i.sha256.as_deref().unwrap_or("")] {
                h.update(part.as_bytes());
                h.update([0]);
            }
        }
        hex(&h.finalize())[..32].to_string()
    }

    /// The set a request's libraries got before, if it is still there.
    pub fn lookup(&self, spec_key: &str) -> Option<String> {
        let key = fs::read_to_string(self.root.join("specs").join(spec_key)).ok()?;
        let key = key.trim().to_string();
        (crate::sandbox::run::is_site_name(&key) && self.sites().join(&key).is_dir()).then_some(key)
    }

    /// Stores an installer's files (paths relative to its `site/`) as the set `installed`,
    /// and records that `spec_key` maps to it. Returns the set's key.
    pub fn put(
        &self,
        spec_key: &str,
        installed: &[Installed],
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<String, StoreError> {
        let key = self.set_key(installed);
        let site = self.sites().join(&key);
        if !site.is_dir() {
            if files.is_empty() {
                return Err(StoreError::Empty);
            }
            let mut nonce = [0u8; 8];
            getrandom::getrandom(&mut nonce)
                .map_err(|e| StoreError::Write(std::io::Error::other(e.to_string())))?;
            let staging = self.root.join("staging").join(hex(&nonce));
            let written = write_tree(&staging, files).and_then(|()| {
                fs::rename(&staging, &site).or_else(|e| match site.is_dir() {
                    // Another install of the same set finished first: same content.
                    true => Ok(()),
                    false => Err(StoreError::Write(e)),
                })
            });
            let _ = fs::remove_dir_all(&staging);
            written?;
        }
        let meta = serde_json::to_vec(installed).map_err(|e| StoreError::Write(e.into()))?;
        write_atomic(&self.root.join("sets").join(format!("{key}.json")), &meta)?;
        write_atomic(&self.root.join("specs").join(spec_key), key.as_bytes())?;
        Ok(key)
    }

    /// Every distribution of every cached set, by canonical name (the versions cached).
    pub fn cached(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let Ok(entries) = fs::read_dir(self.root.join("sets")) else {
            return out;
        };
        for entry in entries.flatten() {
            let Ok(text) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(set) = serde_json::from_slice::<Vec<Installed>>(&text) else {
                continue;
            };
            for i in set {
                let versions = out.entry(super::canonical(&i.name)).or_default();
                if !versions.contains(&i.version) {
                    versions.push(i.version);
                }
            }
        }
        out
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(StoreError::Write)
}

/// Plain relative components only: no root, no `.`, no `..`, no empty part.
fn plain(path: &str) -> Option<Vec<&str>> {
    if path.is_empty() || path.contains('\0') || path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path.split('/').collect();
    let ok = parts.iter().all(|p| {
        !p.is_empty()
            && matches!(Path::new(p).components().next(), Some(Component::Normal(_)))
            && Path::new(p).components().count() == 1
    });
    ok.then_some(parts)
}

/// Writes `files` below `dir` (which must not exist): every directory made here, every
/// file created new (`O_EXCL | O_NOFOLLOW`), world-readable and not executable.
fn write_tree(dir: &Path, files: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
    DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(StoreError::Write)?;
    for (path, bytes) in files {
        let parts = plain(&path).ok_or_else(|| StoreError::Path(path.clone()))?;
        let mut at = dir.to_path_buf();
        for part in &parts[..parts.len() - 1] {
            at.push(part);
            match DirBuilder::new().mode(0o755).create(&at) {
                Ok(()) => {}
                // Made by an earlier file of this set (here, never by a sandbox).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::Write(e)),
            }
        }
        at.push(parts[parts.len() - 1]);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&at)
            .map_err(StoreError::Write)?;
        f.write_all(&bytes).map_err(StoreError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_written() {
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "..", "a/"] {
            assert!(plain(bad).is_none(), "{bad:?}");
        }
        assert_eq!(plain("a/b.py").unwrap(), ["a", "b.py"]);
        let dir = tempfile::tempdir().unwrap();
        let err = write_tree(
            &dir.path().join("t"),
            vec![("../escape".into(), b"x".to_vec())],
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Path(_)), "{err}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn a_set_is_found_by_its_spec_and_keyed_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "3.11.2").unwrap();
        let reqs = [Requirement::parse("Tabulate").unwrap()];
        let spec = store.spec_key("http://i/simple/", &reqs);
        assert_eq!(store.lookup(&spec), None);
        let installed = [Installed {
            name: "tabulate".into(),
            version: "0.9.0".into(),
            sha256: Some("ab".into()),
        }];
        let key = store
            .put(
                &spec,
                &installed,
                vec![("tabulate/__init__.py".into(), b"X = 1\n".to_vec())],
            )
            .unwrap();
        assert_eq!(store.lookup(&spec).as_deref(), Some(key.as_str()));
        assert!(store
            .sites()
            .join(&key)
            .join("tabulate/__init__.py")
            .is_file());
        assert_eq!(store.cached()["tabulate"], ["0.9.0"]);
        let other = Store::open(dir.path(), "3.12.0").unwrap();
        assert_ne!(
            other.set_key(&installed),
            key,
            "the Python version is in the key"
        );
    }
}
