//! What every stage's config shares: defaults written once in clap's attributes, and paths made
//! relative to a pipeline file's folder. Below every other layer, so that the model runner's
//! settings and the stages' configs use the same two helpers.

use std::path::{Path, PathBuf};

/// The config that clap parses from no arguments: the defaults, written once in the clap
/// attributes.
pub fn clap_default<C: clap::Args + clap::FromArgMatches>() -> C {
    let cmd = C::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(Vec::<String>::new())
        .expect("a stage config parses from no arguments");
    C::from_arg_matches(&m).expect("a stage config parses from no arguments")
}

/// A relative path made relative to `base`.
pub fn resolve(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}
