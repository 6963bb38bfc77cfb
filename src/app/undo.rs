//! `batchsse undo`: take back a run recorded with `run --undo`, as a run of
//! its own (the same server, terminal, steering and publishing), and
//! `undo list|clear` for the records.

mod clear;

use std::process::ExitCode;
use std::time::Duration;

use rusqlite::Connection;

use super::checkpoint::file_name;
use super::docs::print;
use super::{Session, execute};
use crate::cli::config::UndoConfig;
use crate::cli::{CheckpointListArgs, UndoAction, UndoArgs};
use crate::error::UsageError;
use crate::human::plural;
use crate::human::quoted;
use crate::human::thousands;
use crate::lifecycle::Lifecycle;
use crate::plan::Plan;
use crate::run::undo::apply::Spec;
use crate::run::undo::{rebuilt, store};
use crate::run::{self as runner, Resume};

pub fn run(args: UndoArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(UndoAction::List(a)) => list(a),
        Some(UndoAction::Clear(a)) => clear::clear(a),
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
            tidy_later: Default::default(),
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
            "nothing to take back: {why}, so no undo record can be read from it; if it is a table of yours, give it another name before recording a run with --undo; if batchsse made it, it was altered by hand and its record is lost: `batchsse undo list` says how to remove it"
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
    let need = store::rows_recorded(conn, &runs).map_err(read_failed)?;
    if let Some(why) = store::no_room_for(conn, need).map_err(read_failed)? {
        return Err(UsageError::new(format!("nothing was taken back: {why}")));
    }
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
        let rebuilt = rebuilt::since_run(conn, run).map_err(sql)?;
        if !rebuilt.is_empty() {
            return Err(UsageError::new(format!(
                "{}. Nothing was taken back, and {}",
                rebuilt::why(&rebuilt, run),
                rebuilt::what_now(&crate::human::shell_path(db), run)
            )));
        }
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
    let stopped = runner::housekeeping::stopped_undos(&conn)?;
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
        let stopped: Vec<_> = stopped
            .iter()
            .map(|(plan, steps)| serde_json::json!({"plan": plan, "steps": steps}))
            .collect();
        format!(
            "{}\n",
            serde_json::json!({"db": args.db.to_string_lossy(), "runs": list, "conflicts_kept": kept, "undo_stopped": stopped})
        )
    } else {
        list_text(&conn, &args.db, &runs, &kept) + &stopped_text(&args.db, &stopped)
    };
    print(text.as_bytes())
}

/// A line per plan of [`runner::housekeeping::stopped_undos`], naming the command that finishes
/// its undo.
fn stopped_text(path: &std::path::Path, stopped: &[(String, Vec<i64>)]) -> String {
    stopped
        .iter()
        .map(|(plan, steps)| {
            let numbers: Vec<String> = steps.iter().map(|s| s.saturating_add(1).to_string()).collect();
            format!(
                "  an undo of plan {} stopped part-way, leaving step{} {} taken back only in part; running the plan is refused until it ends: finish it with `batchsse undo --db {} --plan {}`\n",
                quoted(plan),
                plural(steps.len()),
                numbers.join(", "),
                crate::human::shell_path(path),
                crate::human::shell_word(plan)
            )
        })
        .collect()
}

/// The names of the plans with an undo record, quoted, sorted, each once
/// (none where the record cannot be read).
fn recorded_plans(conn: &Connection) -> Vec<String> {
    let mut plans: Vec<String> = store::runs(conn)
        .unwrap_or_default()
        .iter()
        .map(|r| quoted(&r.plan))
        .collect();
    plans.sort();
    plans.dedup();
    plans
}

/// No record of the run or plan asked for: say which plans have one (most
/// often the name was mistyped), or that only recorded runs can go back.
fn nothing_recorded(conn: &Connection, c: &UndoConfig) -> UsageError {
    let what = match &c.which {
        Ok(run) => format!("run {}", quoted(run)),
        Err(plan) => format!("plan {}", quoted(plan)),
    };
    nothing_recorded_in(conn, &c.db, &what)
}

/// No record of `what` (a run or a plan, named) in the file at `path`.
fn nothing_recorded_in(conn: &Connection, path: &std::path::Path, what: &str) -> UsageError {
    let plans = recorded_plans(conn);
    let db = file_name(path);
    let list = format!(
        "`batchsse undo list --db {}`",
        crate::human::shell_path(path)
    );
    UsageError::new(if plans.is_empty() {
        format!(
            "no undo record of {what} in {db}: it was never recorded (only runs made with --undo, or \"undo\": true, can be taken back), or it has been taken back or cleared already; {list} shows what is recorded"
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
    path: &std::path::Path,
    runs: &[store::RunRecord],
    kept: &[store::KeptConflicts],
) -> String {
    let db = file_name(path);
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
            crate::human::shell_path(path),
            crate::human::shell_word(&k.run)
        );
    }
    t
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
