//! Linux capabilities: a run's processes give up every one, bounding and ambient sets included.

use caps::CapSet;

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities ({set}): {source}")]
pub struct CapsError {
    set: &'static str,
    source: caps::errors::CapsError,
}

/// Empties the bounding set, so no later execve can regain a capability. Needs
/// CAP_SETPCAP, so it runs while the process is still root of its user namespace.
pub fn drop_bounding() -> Result<(), CapsError> {
    caps::clear(None, CapSet::Bounding).map_err(|source| CapsError {
        set: "bounding",
        source,
    })
}

/// Empties the ambient, inheritable, effective and permitted sets of the calling thread.
pub fn drop_all() -> Result<(), CapsError> {
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|source| CapsError { set: name, source })?;
    }
    Ok(())
}

/// Shrinks the bounding set to `keep`, so an execve as root yields exactly these.
pub fn limit_bounding_to(keep: &[caps::Capability]) -> Result<(), CapsError> {
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapsError {
                set: "bounding",
                source,
            })?;
        }
    }
    Ok(())
}
