//! The index options `m` and `ef_construction`: their ranges, how PostgreSQL parses them, and
//! how the build and the planner read them.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::raise_detail;

static mut RELOPT_KIND: pg_sys::relopt_kind::Type = 0;

pub const M_DEFAULT: i32 = 16;
pub const M_MIN: i32 = 2;
pub const M_MAX: i32 = 100;
pub const EF_CONSTRUCTION_DEFAULT: i32 = 64;
pub const EF_CONSTRUCTION_MIN: i32 = 4;
pub const EF_CONSTRUCTION_MAX: i32 = 1000;

/// The parsed `WITH (...)` options, as `build_reloptions` lays them out.
#[repr(C)]
struct Options {
    vl_len: i32,
    m: i32,
    ef_construction: i32,
}

/// Registers the options. Called from `_PG_init`.
pub fn init_reloptions() {
    // SAFETY: _PG_init in the postmaster; the names are static strings.
    unsafe {
        RELOPT_KIND = pg_sys::add_reloption_kind();
        pg_sys::add_int_reloption(
            RELOPT_KIND as _,
            c"m".as_ptr(),
            c"Most links per element on levels above 0 (twice that on level 0)".as_ptr(),
            M_DEFAULT,
            M_MIN,
            M_MAX,
            pg_sys::AccessExclusiveLock as i32,
        );
        pg_sys::add_int_reloption(
            RELOPT_KIND as _,
            c"ef_construction".as_ptr(),
            c"Size of the candidate list while building the graph".as_ptr(),
            EF_CONSTRUCTION_DEFAULT,
            EF_CONSTRUCTION_MIN,
            EF_CONSTRUCTION_MAX,
            pg_sys::AccessExclusiveLock as i32,
        );
    }
}

/// `m` and `ef_construction` as given, unchecked.
pub fn raw_options(index: pg_sys::Relation) -> (i32, i32) {
    // SAFETY: rd_options is NULL or the Options built by amoptions.
    unsafe {
        let o = (*index).rd_options as *const Options;
        if o.is_null() {
            (M_DEFAULT, EF_CONSTRUCTION_DEFAULT)
        } else {
            ((*o).m, (*o).ef_construction)
        }
    }
}

/// `m` and `ef_construction` of an index, refusing an `ef_construction` below `2 m`.
pub fn options(index: pg_sys::Relation) -> (usize, usize) {
    let (m, ef) = raw_options(index);
    if ef < 2 * m {
        raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "ef_construction must be at least 2 * m",
            format!("m = {m} needs ef_construction = {} or more; it is {ef}.", 2 * m),
        );
    }
    (m as usize, ef as usize)
}

/// The access method's `amoptions`: parses and checks `WITH (...)`.
#[pg_guard]
pub unsafe extern "C-unwind" fn amoptions(reloptions: pg_sys::Datum, validate: bool) -> *mut pg_sys::bytea {
    let table = [
        pg_sys::relopt_parse_elt {
            optname: c"m".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, m) as i32,
        },
        pg_sys::relopt_parse_elt {
            optname: c"ef_construction".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, ef_construction) as i32,
        },
    ];
    // SAFETY: build_reloptions parses into a palloc'd Options of the given size.
    pg_sys::build_reloptions(
        reloptions,
        validate,
        RELOPT_KIND,
        std::mem::size_of::<Options>(),
        table.as_ptr(),
        table.len() as i32,
    ) as *mut pg_sys::bytea
}
