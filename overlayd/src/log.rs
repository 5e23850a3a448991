//! Logging: human-readable lines on stderr by default, one JSON object per
//! line with `--log-format=json` (for log shippers). Warnings are repeated
//! at most once a minute per cause: a cause is the warning's call site and
//! its field values, leaving out the ones that change on every repeat
//! (retry delays, counters), so an etcd outage logs one line a minute, not
//! one per retry, while a new error text still shows at once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How often one cause may warn.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Fields that differ between repeats of the same cause.
const VOLATILE: &[&str] = &["retry_in", "waited", "elapsed", "attempt", "since_s"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` sets the level (default info).
pub fn init(format: Format) {
    let env = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let throttle = WarnThrottle::new(WARN_EVERY);
    let registry = tracing_subscriber::registry();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => registry
            .with(
                fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_filter(env())
                    .with_filter(throttle),
            )
            .try_init(),
        Format::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_filter(env())
                    .with_filter(throttle),
            )
            .try_init(),
    };
}

/// Drops a warning whose cause warned less than `every` ago.
pub struct WarnThrottle {
    every: Duration,
    last: Mutex<HashMap<u64, Instant>>,
}

impl WarnThrottle {
    pub fn new(every: Duration) -> Self {
        WarnThrottle {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event with this cause key may be logged now.
    pub fn admit(&self, key: u64, now: Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        // Bounded: forget causes quiet for longer than the period.
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < self.every);
        }
        match last.get(&key) {
            Some(t) if now.duration_since(*t) < self.every => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

/// Hashes the stable field values of an event.
struct CauseKey(DefaultHasher);

impl Visit for CauseKey {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !VOLATILE.contains(&field.name()) {
            field.name().hash(&mut self.0);
            format!("{value:?}").hash(&mut self.0);
        }
    }
}

impl<S> Filter<S> for WarnThrottle {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        if *event.metadata().level() != Level::WARN {
            return true;
        }
        let mut key = CauseKey(DefaultHasher::new());
        event.metadata().callsite().hash(&mut key.0);
        event.record(&mut key);
        self.admit(key.0.finish(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_cause_per_period() {
        let t = WarnThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(t.admit(1, t0));
        assert!(!t.admit(1, t0 + Duration::from_secs(59)));
        assert!(t.admit(2, t0 + Duration::from_secs(1)), "another cause");
        assert!(t.admit(1, t0 + Duration::from_secs(61)));
    }
}
