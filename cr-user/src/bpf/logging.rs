//! Forwards aya-log records (written by the BPF programs with `aya-log-ebpf`) to `tracing`.
//!
//! aya-log 0.3 speaks the `log` crate's `Log` trait; fastcr logs through `tracing`, so this
//! adapter re-emits each record as a `tracing` event with target `cr_ebpf`. The BPF side's
//! filtering is set at load time from `tracing`'s max level (see `bpf_log_level`), so records
//! that would be discarded here are not produced in the first place.

use aya_log::Level as BpfLevel;
use tracing::level_filters::LevelFilter;

/// `log::Log` implementation that forwards to `tracing`.
pub(super) struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        // tracing applies its own filters when the event is emitted.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let args = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "cr_ebpf", "{args}"),
            log::Level::Warn => tracing::warn!(target: "cr_ebpf", "{args}"),
            log::Level::Info => tracing::info!(target: "cr_ebpf", "{args}"),
            log::Level::Debug => tracing::debug!(target: "cr_ebpf", "{args}"),
            log::Level::Trace => tracing::trace!(target: "cr_ebpf", "{args}"),
        }
    }

    fn flush(&self) {}
}

/// The value for the BPF object's `AYA_LOG_LEVEL` global: the most verbose level `tracing`
/// currently lets through, 0 to disable BPF logging entirely.
pub(super) fn bpf_log_level() -> u8 {
    let level = match LevelFilter::current() {
        LevelFilter::OFF => return 0,
        LevelFilter::ERROR => BpfLevel::Error,
        LevelFilter::WARN => BpfLevel::Warn,
        LevelFilter::INFO => BpfLevel::Info,
        LevelFilter::DEBUG => BpfLevel::Debug,
        LevelFilter::TRACE => BpfLevel::Trace,
    };
    level as u8
}
