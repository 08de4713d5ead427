//! Time, injected. All expiry arithmetic goes through a [`Clock`] so tests of an 8-hour token
//! lifetime run in milliseconds.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

/// Test-only: not in production builds (the `testing` feature, which tests turn on).
#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::sync::{Arc, Mutex};

    use chrono::{DateTime, Duration, Utc};

    use super::Clock;

    /// A clock that only moves when told to. Cloning shares the same time.
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        now: Arc<Mutex<DateTime<Utc>>>,
    }

    impl ManualClock {
        /// A clock standing at `start`.
        pub fn new(start: DateTime<Utc>) -> Self {
            Self { now: Arc::new(Mutex::new(start)) }
        }

        /// Moves the clock forward (or back, with a negative duration).
        pub fn advance(&self, by: Duration) {
            let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
            *now += by;
        }

        /// Sets the clock to `to`.
        pub fn set(&self, to: DateTime<Utc>) {
            *self.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.now.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a shared handle.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = ManualClock::new(start);
        let shared = c.clone();
        assert_eq!(c.now(), start);
        shared.advance(Duration::hours(8));
        assert_eq!(c.now(), start + Duration::hours(8));
    }
}

/// A `std` duration (configuration, timeouts) as a chrono one (arithmetic on timestamps),
/// saturating at `chrono::Duration::MAX`: only durations of millions of years overflow, and
/// "forever" is the meaning a configured value that large has. The one conversion every crate
/// uses, so no caller picks its own fallback.
pub fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod conversion_tests {
    use super::*;

    #[test]
    fn converts_exactly_and_saturates() {
        assert_eq!(chrono_duration(std::time::Duration::from_millis(1500)), chrono::Duration::milliseconds(1500));
        assert_eq!(chrono_duration(std::time::Duration::MAX), chrono::Duration::MAX);
    }
}
