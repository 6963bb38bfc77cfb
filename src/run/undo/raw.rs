//! SQLite's raw values, as the pre-update hook hands them over and as the
//! undo's own SQL functions take and give them.

use std::ffi::{c_char, c_int, c_void};

use rusqlite::ffi;
use rusqlite::types::ValueRef;

use super::codec::put_value;

/// A raw SQLite value, borrowed.
///
/// # Safety
/// `v` must be a valid `sqlite3_value`, and the result must be dropped
/// before anything else touches it.
#[inline]
pub unsafe fn value_ref<'v>(v: *mut ffi::sqlite3_value) -> ValueRef<'v> {
    // SAFETY: the caller's promise; text and blob pointers are read for
    // the length SQLite gives.
    unsafe {
        let bytes = |p: *const u8| {
            let n = ffi::sqlite3_value_bytes(v).max(0) as usize;
            if p.is_null() || n == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(p, n)
            }
        };
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => ValueRef::Text(bytes(ffi::sqlite3_value_text(v))),
            ffi::SQLITE_BLOB => ValueRef::Blob(bytes(ffi::sqlite3_value_blob(v) as *const u8)),
            _ => ValueRef::Null,
        }
    }
}

/// Appends a raw SQLite value's encoding.
///
/// # Safety
/// `v` must be a valid `sqlite3_value`.
#[inline]
pub unsafe fn put_raw(out: &mut Vec<u8>, v: *mut ffi::sqlite3_value) {
    // SAFETY: the caller's promise; the value is encoded at once.
    put_value(out, unsafe { value_ref(v) });
}

/// Makes `v` the result of the SQL function call `ctx`.
///
/// # Safety
/// `ctx` must be the context of a function call in progress.
#[inline]
pub unsafe fn set_result(ctx: *mut ffi::sqlite3_context, v: ValueRef<'_>) -> Result<(), String> {
    let len = |b: &[u8]| c_int::try_from(b.len()).map_err(|_| "a value is too long".to_owned());
    // SAFETY: the caller's promise; SQLite copies text and blobs
    // (SQLITE_TRANSIENT) before this returns.
    unsafe {
        match v {
            ValueRef::Null => ffi::sqlite3_result_null(ctx),
            ValueRef::Integer(i) => ffi::sqlite3_result_int64(ctx, i),
            ValueRef::Real(f) => ffi::sqlite3_result_double(ctx, f),
            ValueRef::Text(b) => ffi::sqlite3_result_text(
                ctx,
                b.as_ptr() as *const c_char,
                len(b)?,
                ffi::SQLITE_TRANSIENT(),
            ),
            ValueRef::Blob(b) => ffi::sqlite3_result_blob(
                ctx,
                b.as_ptr() as *const c_void,
                len(b)?,
                ffi::SQLITE_TRANSIENT(),
            ),
        }
    }
    Ok(())
}
