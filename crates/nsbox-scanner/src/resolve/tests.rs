//! Unit tests of name resolution helpers.

use super::*;

#[test]
fn builtin_names_are_sorted_for_binary_search() {
    assert!(BUILTIN_NAMES.windows(2).all(|w| w[0] < w[1]));
    assert!(is_builtin("eval") && is_builtin("__import__") && !is_builtin("df"));
}

#[test]
fn qualified_suffix_matching() {
    assert!(qual_matches(
        "importlib.import_module",
        "importlib.import_module"
    ));
    assert!(qual_matches(
        "x.importlib.import_module",
        "importlib.import_module"
    ));
    assert!(!qual_matches(
        "ximportlib.import_module",
        "importlib.import_module"
    ));
}
