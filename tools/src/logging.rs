//! Structured logs to stderr (slog-term through slog-async).

use slog::{o, Drain, Level, Logger};

/// A logger at `level` writing to stderr.
pub fn logger(level: Level) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    let drain = drain.filter_level(level).fuse();
    Logger::root(drain, o!())
}
