//! Turns on `cfg(batchsse_preupdate)` when the bundled SQLite is compiled
//! with its pre-update hook (`LIBSQLITE3_FLAGS`, which libsqlite3-sys
//! reads too; the repository's `.cargo/config.toml` sets it).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(batchsse_preupdate)");
    println!("cargo::rerun-if-env-changed=LIBSQLITE3_FLAGS");
    let flags = std::env::var("LIBSQLITE3_FLAGS").unwrap_or_default();
    if flags
        .split_whitespace()
        .any(|f| f == "-DSQLITE_ENABLE_PREUPDATE_HOOK")
    {
        println!("cargo::rustc-cfg=batchsse_preupdate");
    }
}
