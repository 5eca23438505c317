//! The open-file limit. A server holds a descriptor per visitor connection
//! (the node) or up to three per node (the controller's embedded broker), and
//! many systems start processes with a soft limit of 1,024 however high the
//! hard limit is. [`raise_open_files`] lifts the soft limit to the hard one
//! at start, as servers commonly do.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Raise the soft open-file limit to the hard limit. Returns the soft limit
/// now in force (`None`: unlimited).
pub fn raise_open_files() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) if current < maximum => {
            let raised = rustix::process::Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(maximum),
                Err(e) => {
                    tracing::warn!(error = %e, current, maximum, "raising the open-file limit failed");
                    Some(current)
                }
            }
        }
        (current, _) => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let after = raise_open_files();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(after, limit.current);
        assert_eq!(limit.current, limit.maximum, "soft raised to hard");
    }
}
