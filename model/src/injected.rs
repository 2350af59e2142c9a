//! Injected bugs: deliberate faults that a `corral` built with the test-only cargo feature
//! `injected-bugs` can switch on, one at a time, so that a control run proves the matching
//! checker fires (the lost-write check, linearizability, the capacity invariant). Without
//! the feature, which no default build enables, [`injected`] is constant `false` and the
//! compiler removes every branch that asks it.

/// The faults a build with `injected-bugs` can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedBug {
    /// The leader answers a write as soon as it is proposed, before it commits.
    AckBeforeCommit,
    /// A linearizable read is served from local state without a read index.
    ReadWithoutReadIndex,
    /// `apply` skips its re-check of a runner's capacity for a placement.
    SkipCapacityRecheck,
    /// The log store reports an append durable before it is synced.
    FlushBeforeFsync,
}

impl InjectedBug {
    pub const ALL: [InjectedBug; 4] = [
        InjectedBug::AckBeforeCommit,
        InjectedBug::ReadWithoutReadIndex,
        InjectedBug::SkipCapacityRecheck,
        InjectedBug::FlushBeforeFsync,
    ];

    /// The name used on command lines and in `CORRAL_INJECTED_BUG`.
    pub fn name(self) -> &'static str {
        match self {
            InjectedBug::AckBeforeCommit => "ack-before-commit",
            InjectedBug::ReadWithoutReadIndex => "read-without-read-index",
            InjectedBug::SkipCapacityRecheck => "skip-capacity-recheck",
            InjectedBug::FlushBeforeFsync => "flush-before-fsync",
        }
    }

    pub fn parse(name: &str) -> Option<InjectedBug> {
        InjectedBug::ALL.into_iter().find(|b| b.name() == name)
    }

    #[cfg(feature = "injected-bugs")]
    fn code(self) -> u8 {
        match self {
            InjectedBug::AckBeforeCommit => 1,
            InjectedBug::ReadWithoutReadIndex => 2,
            InjectedBug::SkipCapacityRecheck => 3,
            InjectedBug::FlushBeforeFsync => 4,
        }
    }
}

#[cfg(feature = "injected-bugs")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches `bug` on for the whole process (`None`: none). Only in builds with the feature.
#[cfg(feature = "injected-bugs")]
pub fn inject(bug: Option<InjectedBug>) {
    ACTIVE.store(bug.map_or(0, InjectedBug::code), std::sync::atomic::Ordering::SeqCst);
}

/// Whether `bug` is switched on. Always `false` without the `injected-bugs` feature.
#[inline(always)]
pub fn injected(bug: InjectedBug) -> bool {
    #[cfg(feature = "injected-bugs")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == bug.code()
    }
    #[cfg(not(feature = "injected-bugs"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in InjectedBug::ALL {
            assert_eq!(InjectedBug::parse(bug.name()), Some(bug));
        }
        assert_eq!(InjectedBug::parse("none"), None);
    }

    #[cfg(not(feature = "injected-bugs"))]
    #[test]
    fn a_default_build_injects_nothing() {
        assert!(InjectedBug::ALL.into_iter().all(|b| !injected(b)));
    }
}
