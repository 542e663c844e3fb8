//! Raising PostgreSQL errors: an SQLSTATE, a lower-case message without a final period, and a
//! DETAIL or HINT sentence where one helps.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR. Never returns: the transaction aborts.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    report(code, message.into(), None, None)
}

/// Raises an ERROR with a DETAIL sentence.
pub fn raise_detail(code: PgSqlErrorCode, message: impl Into<String>, detail: impl Into<String>) -> ! {
    report(code, message.into(), Some(detail.into()), None)
}

/// Raises an ERROR with a HINT sentence.
pub fn raise_hint(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    report(code, message.into(), None, Some(hint.into()))
}

/// Raises an ERROR with a DETAIL and a HINT sentence.
pub fn raise_detail_hint(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    report(code, message.into(), Some(detail.into()), Some(hint.into()))
}

#[track_caller]
fn report(code: PgSqlErrorCode, message: String, detail: Option<String>, hint: Option<String>) -> ! {
    let mut e = ErrorReport::new(code, message, "sutra");
    if let Some(d) = detail {
        e = e.set_detail(d);
    }
    if let Some(h) = hint {
        e = e.set_hint(h);
    }
    e.report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// Sends a WARNING with a HINT sentence; execution goes on.
pub fn warn_hint(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) {
    ErrorReport::new(code, message.into(), "sutra").set_hint(hint.into()).report(PgLogLevel::WARNING);
}
