//! Placeholder until the seccomp module lands (replaced by the real policy compiler).

use std::collections::HashMap;
use std::convert::TryInto;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("parsing the seccomp policy: {0}")]
    Parse(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

#[derive(Debug, Clone)]
pub struct SeccompProgram(seccompiler::BpfProgram);

pub fn compile(policy_json: &str) -> Result<SeccompProgram, SeccompError> {
    let filters: HashMap<String, seccompiler::BpfProgram> = seccompiler::compile_from_json(
        policy_json.as_bytes(),
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| SeccompError::Parse(format!("{e:?}")))?,
    )
    .map_err(|e| SeccompError::Parse(e.to_string()))?;
    filters
        .into_values()
        .next()
        .map(SeccompProgram)
        .ok_or(SeccompError::Parse("empty".into()))
}

pub fn builtin() -> Result<SeccompProgram, SeccompError> {
    compile(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/seccomp/default.json"
    )))
}

impl SeccompProgram {
    pub fn apply(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.0).map_err(|e| SeccompError::Install(e.to_string()))
    }
}
