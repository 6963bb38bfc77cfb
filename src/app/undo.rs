//! `batchsse undo`: take back a run recorded with `run --undo`, as a run of
//! its own (the same server, terminal, steering and publishing), and
//! `undo list|clear` for the records.

use std::process::ExitCode;
use std::time::Duration;

use rusqlite::Connection;

use super::checkpoint::file_name;
use super::docs::print;
use super::{Session, execute};
use crate::cli::config::UndoConfig;
use crate::cli::{CheckpointListArgs, UndoAction, UndoArgs, UndoClearArgs};
use crate::error::UsageError;
use crate::human::plural;
use crate::human::quoted;
use crate::human::thousands;
use crate::lifecycle::Lifecycle;
use crate::plan::Plan;
use crate::run::undo::apply::Spec;
use crate::run::undo::store;
use crate::run::{self as runner, Resume};

pub fn run(args: UndoArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(UndoAction::List(a)) => list(a),
        Some(UndoAction::Clear(a)) => clear(a),
        None => {
            let config = UndoConfig::from_args(&args.apply)?;
            runner::look_ahead(&config.db);
            let lifecycle = Lifecycle::start()?;
            let session = open(config)?;
            execute(lifecycle, session)
        }
    }
}

/// Opens the database and finds the runs to take back; nothing is written.
fn open(c: UndoConfig) -> Result<Session, UsageError> {
    let conn = runner::open_db(&c.db, c.busy_timeout)?;
    if let Some(q) = &c.opts.brakes.throttle_query {
        runner::check_throttle_query(&c.db, q)?;
    }
    // The record holds every change the plan's triggers and foreign-key
    // actions made; applying it must not set them off again.
    // And a column renamed or dropped since the run must be an error, not
    // a double-quoted name read as a string (every row a false conflict).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .and_then(|_| conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DML, false))
    .and_then(|_| conn.execute_batch("PRAGMA foreign_keys = OFF"))
    .map_err(|e| UsageError::new(format!("cannot turn triggers off for the undo: {e}")))?;
    let (runs, plan, kept) = check_record(&conn, &c)?;
    Ok(Session {
        conn,
        plan: Plan {
            name: plan,
            steps: Vec::new(),
            foreign_keys: false,
            undo: false,
            script: false,
        },
        resume: Resume::none(),
        opts: c.opts,
        serve: c.serve,
        progress: c.progress,
        progress_interval: c.progress_interval,
        publish: c.publish,
        banner: None,
        undo: Some(Spec {
            runs,
            plan: String::new(),
            on_conflict: c.on_conflict,
            kept: std::cell::RefCell::new(kept),
        }),
    })
    .map(|mut s| {
        if let Some(spec) = &mut s.undo {
            spec.plan = s.plan.name.clone();
        }
        s
    })
}

/// The runs to take back and their plan, with their record read and
/// checked (what fits kept for the undo); refused, nothing written, when
/// the record cannot be taken back as it is.
fn check_record(
    conn: &Connection,
    c: &UndoConfig,
) -> Result<(Vec<String>, String, store::Kept), UsageError> {
    let read_failed = |e: rusqlite::Error| {
        UsageError::new(format!(
            "cannot read the undo record in {}: {}; nothing was taken back",
            file_name(&c.db),
            runner::run_time_message(conn, &e)
        ))
    };
    if let Some(why) = store::not_ours(conn).map_err(read_failed)? {
        return Err(UsageError::new(format!(
            "nothing to take back: {why}, so it holds no undo record; if it is yours, give it another name before recording a run with --undo"
        )));
    }
    let (runs, plan) = find(conn, &c.which).map_err(read_failed)?;
    if runs.is_empty() {
        return Err(nothing_recorded(conn, c));
    }
    refuse_renumbered(conn, &runs, &c.db, &read_failed)?;
    if !c.opts.dry_run {
        super::checkpoint::refuse_beside_a_run(
            &c.db,
            "a run still recording would go on changing rows after the undo took back what it had recorded so far (which plan the other process runs cannot be told, so any run of the file counts)",
            "Nothing was taken back",
            "undo",
        )?;
    }
    if store::conflicts_gone(conn).map_err(read_failed)? {
        let why = format!(
            "its table {}, where undos keep the rows they leave alone, is gone, so an undo could put back rows an earlier one kept",
            store::CONFLICTS
        );
        return Err(damaged(c, &runs[0], &why));
    }
    let mut kept = store::Kept::default();
    for run in &runs {
        if let Some(why) = store::damage(conn, run, &mut kept).map_err(read_failed)? {
            return Err(damaged(c, run, &why));
        }
    }
    // Read whole now, so that a damaged page stops the undo before it
    // begins rather than as it begins (each part it takes back writes
    // the checkpoint too).
    store::count_kept(conn).map_err(read_failed)?;
    runner::housekeeping::records(conn)?;
    Ok((runs, plan, kept))
}

/// The refusal of an undo whose record of `run` is damaged (`why`).
fn damaged(c: &UndoConfig, run: &str, why: &str) -> UsageError {
    UsageError::new(format!(
        "the undo record of run {run} in {} is damaged ({why}); it was altered since the run wrote it, and taking it back would leave rows out or put wrong values back. Nothing was taken back: put the undo tables back from a copy of the file, or remove the record with `batchsse undo clear --db {} --run {}`",
        file_name(&c.db),
        crate::human::shell_path(&c.db),
        crate::human::shell_word(run)
    ))
}

/// Refuses runs whose record finds rows by a rowid that a `VACUUM` or a
/// copy through `.dump` has renumbered since: the undo would put old
/// values into other rows. A `VACUUM` keeps the rowids of a table with an
/// index (SQLite copies the index as it is) and numbers those of one
/// without anew from 1; a `.dump` copy numbers every such table anew.
fn refuse_renumbered(
    conn: &Connection,
    runs: &[String],
    db: &std::path::Path,
    sql: &dyn Fn(rusqlite::Error) -> UsageError,
) -> Result<(), UsageError> {
    for run in runs {
        let Some(how) = store::renumbered(conn, run).map_err(sql)? else {
            continue;
        };
        let tables = store::by_rowid(conn, run, how).map_err(sql)?;
        if tables.is_empty() {
            continue;
        }
        let one = tables.len() == 1;
        let tail = match how {
            store::Renumbered::Vacuum => format!(
                ": {} no index when the run was recorded, or none now; an index added since does not give the old rowids back",
                if one { "it had" } else { "they had" }
            ),
            store::Renumbered::Copy => String::new(),
        };
        let by = format!("by {}, {}{tail}", how.by(), how.which());
        return Err(UsageError::new(format!(
            "the rowids of {} were numbered anew since run {run} was recorded ({by}), and the record finds {} rows by rowid, so taking it back would put old values into other rows. Nothing was taken back, and this record can no longer be taken back safely: remove it with `batchsse undo clear --db {} --run {}`. To keep this from happening, take runs back before vacuuming or copying the file, or give such tables an INTEGER PRIMARY KEY",
            crate::human::shown_list(&tables),
            if one { "its" } else { "their" },
            crate::human::shell_path(db),
            crate::human::shell_word(run)
        )));
    }
    Ok(())
}

/// The runs to take back, newest first, and their plan.
fn find(
    conn: &Connection,
    which: &Result<String, String>,
) -> rusqlite::Result<(Vec<String>, String)> {
    if !store::exists(conn)? {
        return Ok((Vec::new(), String::new()));
    }
    match which {
        Ok(run) => {
            let plan: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT plan FROM batchsse_undo WHERE run = ?1 LIMIT 1",
                [run],
                |r| r.get(0),
            ))?;
            Ok(plan.map_or((Vec::new(), String::new()), |p| (vec![run.clone()], p)))
        }
        Err(plan) => Ok((store::runs_of_plan(conn, plan)?, plan.clone())),
    }
}

fn list(args: CheckpointListArgs) -> anyhow::Result<ExitCode> {
    let conn = runner::open_db_to_read(&args.db, Duration::from_millis(args.busy_timeout))?;
    let runs = store::runs(&conn)?;
    let kept = store::kept_conflicts(&conn)?;
    let db = file_name(&args.db);
    let text = if args.json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| {
                serde_json::json!({"run": r.run, "plan": r.plan, "chunks": r.chunks, "rows": r.rows,
                    "bytes": r.bytes, "first_at": r.first_at, "last_at": r.last_at})
            })
            .collect();
        let kept: Vec<_> = kept
            .iter()
            .map(|k| serde_json::json!({"run": k.run, "conflicts": k.conflicts, "last_at": k.last_at}))
            .collect();
        format!(
            "{}\n",
            serde_json::json!({"db": args.db.to_string_lossy(), "runs": list, "conflicts_kept": kept})
        )
    } else {
        list_text(&conn, &db, &runs, &kept)
    };
    print(text.as_bytes())
}

/// No record of the run or plan asked for: say which plans have one (most
/// often the name was mistyped), or that only recorded runs can go back.
fn nothing_recorded(conn: &Connection, c: &UndoConfig) -> UsageError {
    let what = match &c.which {
        Ok(run) => format!("run {}", quoted(run)),
        Err(plan) => format!("plan {}", quoted(plan)),
    };
    let mut plans: Vec<String> = store::runs(conn)
        .unwrap_or_default()
        .into_iter()
        .map(|r| quoted(&r.plan))
        .collect();
    plans.sort();
    plans.dedup();
    let db = file_name(&c.db);
    let list = format!(
        "`batchsse undo list --db {}`",
        crate::human::shell_path(&c.db)
    );
    UsageError::new(if plans.is_empty() {
        format!(
            "no undo record of {what} in {db}: it was never recorded (only runs made with --undo, or \"undo\": true, can be taken back), or it has been taken back already; {list} shows what is recorded"
        )
    } else {
        format!(
            "no undo record of {what} in {db}; recorded plans: {} ({list} shows their runs)",
            plans.join(", ")
        )
    })
}

fn list_text(
    conn: &Connection,
    db: &str,
    runs: &[store::RunRecord],
    kept: &[store::KeptConflicts],
) -> String {
    let mut t = if runs.is_empty() && kept.is_empty() {
        format!("no undo records in {db}\n")
    } else if runs.is_empty() {
        // Not "no undo records" above a list of runs.
        format!("no undo records in {db}; only the conflicts kept by undos of runs taken back:\n")
    } else {
        format!("undo records in {db}:\n")
    };
    for r in runs {
        t += &format!(
            "  run {}  plan {}: {} chunk{}, {} rows, {} bytes, recorded {} to {}{}\n",
            r.run,
            quoted(&r.plan),
            r.chunks,
            plural(r.chunks as usize),
            thousands(r.rows),
            thousands(r.bytes),
            r.first_at,
            r.last_at,
            age_of(conn, &r.last_at).map_or_else(String::new, |a| format!(" ({a} ago)"))
        );
    }
    for k in kept {
        t += &format!(
            "  run {}: taken back; its undo kept {} conflict{} in batchsse_undo_conflict, the last at {} (`batchsse undo clear --db {} --run {}` removes them)\n",
            k.run,
            thousands(k.conflicts),
            plural(k.conflicts as usize),
            k.last_at,
            crate::human::shell_word(db),
            crate::human::shell_word(&k.run)
        );
    }
    t
}

fn clear(args: UndoClearArgs) -> anyhow::Result<ExitCode> {
    let conn = runner::open_db_to_tidy(&args.db, Duration::from_millis(args.busy_timeout))?;
    super::checkpoint::refuse_under_a_live_run(
        &args.db,
        "an undo under way would find its record gone and stop short of taking the run back, while saying it finished, and a run recording would record what no undo can take back",
    )?;
    let older = args.older_than.as_deref().map(age).transpose()?;
    let runs = store::runs(&conn)?;
    let kept = store::kept_conflicts(&conn)?;
    let chosen_at = |run: &str, at: &str| match (&args.run, older) {
        (Some(id), _) => run == id,
        (None, Some(secs)) => older_than(&conn, at, secs),
        (None, None) => true,
    };
    let chosen: Vec<&store::RunRecord> = runs
        .iter()
        .filter(|r| chosen_at(&r.run, &r.last_at))
        .collect();
    let reports: Vec<&store::KeptConflicts> = kept
        .iter()
        .filter(|k| chosen_at(&k.run, &k.last_at))
        .collect();
    if let (Some(id), true) = (&args.run, chosen.is_empty() && reports.is_empty()) {
        return Err(UsageError::new(format!(
            "no undo record of run {} in {}; `batchsse undo list --db {}` shows them",
            quoted(id),
            file_name(&args.db),
            crate::human::shell_path(&args.db)
        ))
        .into());
    }
    let ids: Vec<String> = chosen
        .iter()
        .map(|r| r.run.clone())
        .chain(reports.iter().map(|k| k.run.clone()))
        .collect();
    let dropped = runner::undo::store::clear(&conn, &ids, args.all)?;
    let db = file_name(&args.db);
    let mut text = cleared_text(&db, &chosen, &reports);
    match (ids.is_empty(), &args.older_than) {
        (true, Some(age)) if !runs.is_empty() || !kept.is_empty() => {
            let n = runs.len() + kept.len();
            text += &format!(
                "no undo record in {db} is older than {age}; {n} run{} kept (`batchsse undo list --db {}` shows them)\n",
                plural(n),
                crate::human::shell_path(&args.db)
            );
        }
        (true, _) => text += &format!("no undo record to clear in {db}\n"),
        _ => {}
    }
    if dropped {
        text += &format!("dropped the undo tables: no undo record is left in {db}\n");
    }
    print(text.as_bytes())
}

/// One line per record or report removed.
fn cleared_text(
    db: &str,
    chosen: &[&store::RunRecord],
    reports: &[&store::KeptConflicts],
) -> String {
    let mut text = String::new();
    for r in chosen {
        text += &format!(
            "removed the undo record of run {} (plan {}, {} bytes) from {db}; it can no longer be taken back\n",
            r.run,
            quoted(&r.plan),
            thousands(r.bytes)
        );
    }
    for k in reports {
        text += &format!(
            "removed the {} conflict{} the undo of run {} kept from {db}\n",
            thousands(k.conflicts),
            plural(k.conflicts as usize),
            k.run
        );
    }
    text
}

/// `30m`, `12h`, `7d` (or plain seconds) in seconds.
fn age(s: &str) -> Result<i64, UsageError> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if mult > 0 => Ok(n.saturating_mul(mult)),
        // Digits alone, but more than any age: as good as "never".
        Err(e) if mult > 0 && *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(i64::MAX),
        _ => Err(UsageError::new(format!(
            "--older-than takes a whole number followed by s, m, h or d (seconds, minutes, hours, days), such as 30m, 12h or 7d; got {}",
            quoted(s)
        ))),
    }
}

/// How long ago `at` (as SQLite wrote it) was, as a person says it.
fn age_of(conn: &Connection, at: &str) -> Option<String> {
    let secs: i64 = conn
        .query_row(
            "SELECT CAST((julianday('now') - julianday(?1)) * 86400 AS INTEGER)",
            [at],
            |r| r.get(0),
        )
        .ok()?;
    Some(match secs.max(0) {
        0..60 => "under a minute".to_owned(),
        s @ 60..7200 => format!("{} min", s / 60),
        s @ 7200..172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    })
}

fn older_than(conn: &Connection, at: &str, secs: i64) -> bool {
    conn.query_row(
        "SELECT (julianday('now') - julianday(?1)) * 86400 > ?2",
        rusqlite::params![at, secs],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_are_read_or_refused_with_the_units() {
        for (text, secs) in [
            ("0", 0),
            ("45", 45),
            ("45s", 45),
            ("30m", 1800),
            ("12h", 43_200),
            ("7d", 604_800),
            ("99999999999d", 8_639_999_999_913_600),
            ("999999999999999999d", i64::MAX),
            ("99999999999999999999", i64::MAX),
        ] {
            assert_eq!(age(text).unwrap(), secs, "{text}");
        }
        for bad in ["", "-1d", "1y", "7D", "1.5h", "+5m", "1 d", "d", "garbage"] {
            let why = age(bad).unwrap_err().to_string();
            assert!(why.contains("followed by s, m, h or d"), "{bad}: {why}");
        }
    }
}
