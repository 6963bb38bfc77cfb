//! `batchsse demo`: a fresh sample shop database and the sample plan, run
//! with the server on at a pace a person can watch (about 20 s).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;
use sha2::Digest;

use crate::app;
use crate::cli::DemoArgs;
use crate::cli::config::{RunConfig, check_serve};
use crate::error::UsageError;
use crate::lifecycle::Lifecycle;
use crate::plan::Source;
use crate::run as runner;

pub const SCHEMA: &str = include_str!("../../sample-data/schema.sql");
pub const GENERATE: &str = include_str!("../../sample-data/generate.sql");
pub const PLAN: &str = include_str!("../../sample-data/plan.json");
/// The sample files a kept shop gets beside it, so the README's commands
/// work with the binary alone (no checkout).
const SAMPLES: [(&str, &str); 3] = [
    ("plan.json", PLAN),
    (
        "undo-plan.json",
        include_str!("../../sample-data/undo-plan.json"),
    ),
    ("fix.sql", include_str!("../../sample-data/fix.sql")),
];

/// Chunks per chunked step; with the default sleep the demo takes ~20 s.
const CHUNKS_PER_STEP: u64 = 40;
const DEFAULT_SLEEP_MS: u64 = 250;

/// Writes the sample schema and `rows` orders into a new database file.
pub fn create_sample_db(path: &Path, rows: u64) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch("CREATE TEMP TABLE params(n INTEGER)")?;
    conn.execute("INSERT INTO temp.params VALUES (?1)", [rows as i64])?;
    conn.execute_batch(&format!("BEGIN; {GENERATE} COMMIT;"))?;
    Ok(())
}

/// What a signal during the making of the shop removes: the temporary
/// folder, or in a `--keep` folder the shop, which half made would stop
/// the next demo there.
fn remove_on_quit(lifecycle: &Lifecycle, dir: &Path, kept: bool) {
    if !kept {
        return lifecycle.remove_on_quit(dir);
    }
    for end in ["", "-journal"] {
        lifecycle.remove_on_quit(&dir.join(format!("shop.sqlite{end}")));
    }
}

/// What the flags ask for that the demo cannot do.
fn refuse_bad(args: &DemoArgs) -> Result<(), UsageError> {
    if args.rows == 0 || args.rows > 100_000_000 {
        return Err(UsageError::new("--rows takes 1 to 100,000,000"));
    }
    if args.create_only && args.keep.is_none() {
        return Err(UsageError::new(
            "--create-only needs --keep DIR: without it the database is deleted on exit",
        ));
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    refuse_bad(&args)?;
    let sleep = crate::cli::config::sleep_ms(args.sleep.unwrap_or(DEFAULT_SLEEP_MS))?;
    let mut serve = check_serve(&args.serve, 15.0)?;
    // The demo can always be steered: a fresh control token, in the
    // dashboard address it prints (after `#`, so no server or log sees it).
    if let Some(s) = serve.as_mut()
        && s.config.control_token.is_none()
    {
        s.config.control_token = Some(random_token());
    }
    let (_tmp, dir) = app::demo_dir(args.keep.as_ref())?;
    let db = dir.join("shop.sqlite");
    if db.exists() {
        return Err(UsageError::new(format!(
            "{} already exists; the demo always starts from a fresh database, so pick another --keep folder",
            crate::human::shown_path(&db)
        ))
        .into());
    }
    // From here a signal exits 130 and takes the temporary folder with it:
    // killed mid-way, a large shop would stay behind in it.
    let lifecycle = Lifecycle::start()?;
    remove_on_quit(&lifecycle, &dir, args.keep.is_some());
    create_sample_db(&db, args.rows)?;
    as_if_idle(&db)?;
    let theirs = match args.keep {
        Some(_) => write_samples(&dir)?,
        None => Vec::new(),
    };
    if args.keep.is_some() {
        lifecycle.keep_on_quit();
    }
    let left = left_alone(&dir, &theirs);
    if args.create_only {
        crate::errln!("{left}{}", created(&dir, args.rows, &theirs));
        return Ok(ExitCode::SUCCESS);
    }
    // With the server on, the listening line comes first (scripts read it).
    let serving = serve.is_some();
    if !serving && !left.is_empty() {
        crate::errln!("{}", left.trim_end());
    }
    let mut opts = runner::Options::default();
    opts.pace.batch_size = Some(args.rows.div_ceil(CHUNKS_PER_STEP));
    opts.pace.sleep = sleep;
    let sample_beside = !theirs.contains(&"plan.json");
    let kept = args.keep.is_some().then_some(&dir);
    go_on(&mut opts, kept.filter(|_| sample_beside));
    let source = Source::Json {
        name: "plan.json".into(),
        text: PLAN.into(),
    };
    let mut session = app::open(RunConfig {
        db: db.clone(),
        source,
        opts,
        force: false,
        busy_timeout: Duration::from_secs(5),
        serve,
        progress: args.serve.progress,
        progress_interval: crate::cli::config::progress_interval(args.serve.progress_interval)?,
        publish: crate::cli::config::publish(&args.serve.publish, args.serve.drain_timeout)?,
    })?;
    let deleted = if args.keep.is_some() {
        ""
    } else {
        " (deleted on exit; --keep DIR keeps it)"
    };
    session.banner = Some(format!(
        "{}batchsse: demo: {} orders in {}{deleted}\nbatchsse: open {{control_url}} in a browser to watch and steer it (curl -N '{{events}}' shows the raw stream; `batchsse ctl {{base}} pause --control-token {{control_token}}` pauses it)",
        if serving { left.as_str() } else { "" },
        crate::human::thousands(args.rows),
        crate::human::shown_path(&db),
    ));
    app::execute(lifecycle, session)
}

/// A line for each of `theirs`, the files in `dir` that are not the
/// samples of their name, left as they were.
fn left_alone(dir: &Path, theirs: &[&str]) -> String {
    theirs
        .iter()
        .map(|name| {
            format!(
                "batchsse: demo: {} exists; left as it is (it is not the sample {name})\n",
                crate::human::shown_path(&dir.join(name))
            )
        })
        .collect()
}

/// What `--create-only` made in `dir`, and what to try on it. `theirs`:
/// the sample files that were there already, and are not the samples.
fn created(dir: &Path, rows: u64, theirs: &[&str]) -> String {
    let (db, plan) = (dir.join("shop.sqlite"), dir.join("plan.json"));
    let run = format!(
        "batchsse run --db {} --plan {}",
        crate::human::shell_path(&db),
        crate::human::shell_path(&plan)
    );
    let made = format!(
        "batchsse: demo: created {} with {} orders",
        crate::human::shown_path(&db),
        crate::human::thousands(rows)
    );
    if theirs.is_empty() {
        return format!(
            "{made}, and the sample plans beside it; the sample plan has not run on it. Try:\n  {run}"
        );
    }
    let beside = format!(
        "and the sample plans beside it but {}, left as {} found",
        theirs.join(", "),
        if theirs.len() == 1 {
            "it was"
        } else {
            "they were"
        }
    );
    if !theirs.contains(&"plan.json") {
        return format!("{made}, {beside}; the sample plan has not run on it. Try:\n  {run}");
    }
    format!(
        "{made}, {beside}; nothing has run on it. {} is not the sample plan: yours runs on the shop with\n  {run}\nand the sample plan comes beside a fresh shop in a new folder:\n  batchsse demo --keep NEW-FOLDER --create-only",
        crate::human::shown_path(&plan)
    )
}

/// The demo again would start afresh: a demo stopped with its shop kept
/// in `kept` goes on with `run` there, and one whose shop is deleted on
/// exit has nothing to go on from, so it checkpoints nothing; nor does
/// one kept beside a `plan.json` of the user's own, which `run` would
/// apply instead of the sample.
fn go_on(opts: &mut runner::Options, kept: Option<&std::path::PathBuf>) {
    match kept {
        Some(dir) => {
            opts.go_on = Some(format!(
                "batchsse run --db {} --plan {}",
                crate::human::shell_path(&dir.join("shop.sqlite")),
                crate::human::shell_path(&dir.join("plan.json"))
            ));
        }
        None => opts.checkpoint = false,
    }
}

/// Dates the fresh shop an hour back. A run takes a file written within
/// the last minute for one an application is using, and starts at the
/// live pace saying so; the shop's only writer so far is the demo itself.
fn as_if_idle(db: &Path) -> std::io::Result<()> {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(db)?
        .set_modified(hour_ago)
}

/// Writes the sample plans into `dir`, leaving alone a file of the same
/// name already there (it may be the user's own); returns the names of
/// those that are not the sample.
fn write_samples(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut theirs = Vec::new();
    for (name, text) in SAMPLES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        } else if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue;
        } else {
            theirs.push(name);
        }
    }
    Ok(theirs)
}

/// 128 random bits as hex, from the system's generator.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // No /dev/urandom: the clock and the pid, hashed, still differ per run.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
