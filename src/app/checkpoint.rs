//! `batchsse checkpoint list|clear`: what resumable runs have recorded in a
//! database, shown as text or JSON, and removed by plan or whole. The file
//! is opened as `run` opens it (never created); user tables are not read.

use std::process::ExitCode;
use std::time::Duration;

use rusqlite::types::Value as Sql;
use serde_json::{Value, json};

use super::docs::print;
use crate::cli::{CheckpointAction, CheckpointArgs, CheckpointClearArgs, CheckpointListArgs};
use crate::human::{plural, quoted, thousands};
use crate::run::checkpoint::TABLE;
use crate::run::housekeeping::{self, Record, Which};
use crate::run::{self as runner};

pub fn run(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        CheckpointAction::List(a) => list(a),
        CheckpointAction::Clear(a) => clear(a),
    }
}

fn list(args: CheckpointListArgs) -> anyhow::Result<ExitCode> {
    let conn = runner::open_db_to_read(&args.db, Duration::from_millis(args.busy_timeout))?;
    let records = housekeeping::records(&conn)?;
    let strays = housekeeping::kept_unrecorded(&conn, &records)?;
    let text = if args.json {
        // A value in JSON, kept as given.
        let mut v = as_json(&args.db.to_string_lossy(), &records);
        v["kept_unrecorded"] = strays_json(&strays);
        format!("{v}\n")
    } else {
        as_text(&args.db, &records) + &strays_text(&args.db, &strays)
    };
    print(text.as_bytes())
}

fn clear(args: CheckpointClearArgs) -> anyhow::Result<ExitCode> {
    let conn = runner::open_db_to_tidy(&args.db, Duration::from_millis(args.busy_timeout))?;
    refuse_under_a_live_run(
        &args.db,
        "clearing the checkpoint under it would stop it, and running its plan again would apply what it committed twice",
    )?;
    let which = match &args.plan {
        Some(name) => Which::Plan(name),
        None => Which::All,
    };
    let cleared = housekeeping::clear(&conn, which)?;
    let db = file_name(&args.db);
    let mut text = String::new();
    if cleared.plans.is_empty() {
        text += &format!("no checkpoint recorded in {db}; nothing to clear\n");
    }
    for (plan, steps) in &cleared.plans {
        if *steps == 0 {
            text += &format!(
                "removed from {db} the rows of TEMP tables plan {} kept, with no step of it recorded (a run stopped while it kept them)\n",
                quoted(plan)
            );
            continue;
        }
        text += &format!(
            "removed the checkpoint of plan {} ({steps} step record{}) from {db}; its next run starts from the first step\n",
            quoted(plan),
            plural(*steps)
        );
    }
    if cleared.dropped {
        text += &format!("dropped the {TABLE} table: no checkpoint is left in {db}\n");
    }
    if cleared.undo_runs > 0 {
        text += &format!(
            "removed the undo records of {} run{} of {}: they can no longer be taken back\n",
            cleared.undo_runs,
            plural(cleared.undo_runs),
            if cleared.plans.len() == 1 {
                "that plan"
            } else {
                "those plans"
            }
        );
    }
    print(text.as_bytes())
}

/// A run (or undo) of this file still going would fail at its next chunk
/// with its checkpoint gone, and told to run again it would apply what it
/// had committed a second time; an undo would find its record gone: so no
/// clear while one has the file open. `why`: what the clear would do.
pub(super) fn refuse_under_a_live_run(
    db: &std::path::Path,
    why: &str,
) -> Result<(), crate::error::UsageError> {
    let pids = crate::platform::open_by_this_program(db);
    refuse_beside(
        db,
        &pids,
        ("a run or an undo", why),
        "Nothing was removed",
        "clear",
    )
}

/// Refuses (where the system tells) while another batchsse has `db` open
/// for writing as a run: `why` says what going on would do, `done` what
/// was not, and `then` what to do once the run has ended.
pub(super) fn refuse_beside_a_run(
    db: &std::path::Path,
    why: &str,
    done: &str,
    then: &str,
) -> Result<(), crate::error::UsageError> {
    let runs: Vec<u32> = crate::platform::open_by_this_program(db)
        .into_iter()
        .filter(|p| {
            matches!(
                crate::platform::first_argument(*p).as_deref(),
                Some("run" | "demo")
            )
        })
        .collect();
    refuse_beside(db, &runs, ("a run", why), done, then)
}

/// Refuses (where the system tells) while another batchsse takes back
/// `plan` on `db` (`batchsse undo --plan` of it, or `--run` of one of its
/// runs): between two of the undo's steps a run would apply again the
/// step just taken back, while the undo went on to take back the ones
/// before it.
pub(super) fn refuse_beside_an_undo(
    conn: &rusqlite::Connection,
    db: &std::path::Path,
    plan: &str,
) -> Result<(), crate::error::UsageError> {
    let runs = runner::undo::store::runs_of_plan(conn, plan).unwrap_or_default();
    // An undo of the plan with a step left to take back still has its
    // record here: with none (most runs), no look through the system's
    // processes at start-up.
    if runs.is_empty() {
        return Ok(());
    }
    let undos: Vec<u32> = crate::platform::open_by_this_program(db)
        .into_iter()
        .filter(|p| crate::platform::arguments(*p).is_some_and(|a| takes_back(&a, plan, &runs)))
        .collect();
    refuse_beside(
        db,
        &undos,
        (
            &format!("an undo of plan {}", quoted(plan)),
            "between two of its steps a run would apply again the step it has just taken back, while it goes on to take back the ones before",
        ),
        "Nothing ran",
        "run the plan",
    )
}

/// Whether a batchsse started with `args` takes back (part of) `plan`,
/// whose recorded runs are `runs`: an undo that writes, of the plan or of
/// one of those runs.
fn takes_back(args: &[String], plan: &str, runs: &[String]) -> bool {
    let word = |i: usize| args.get(i).map(String::as_str);
    if word(1) != Some("undo") || matches!(word(2), Some("list" | "clear")) {
        return false;
    }
    let value = |flag: &str| flag_value(args, flag);
    let dry = args.iter().any(|a| a == "--dry-run");
    !dry && (value("--plan") == Some(plan)
        || value("--run").is_some_and(|r| runs.iter().any(|x| x == r)))
}

/// The value `args` give `flag` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix(&eq) {
            Some(v) => Some(v),
            None if a == flag => args.get(i + 1).map(String::as_str),
            None => None,
        })
}

/// Refuses (where the system tells) while another batchsse runs the same
/// plan file (`plan`, as this run was given it) on `db`: the two would
/// take turns applying its chunks, the first stopping (exit 1) once it
/// found its checkpoint moved, and with `--no-checkpoint` both would
/// apply every step. A dry run, which writes nothing, is neither refused
/// nor counted.
pub(super) fn refuse_beside_the_same_plan(
    db: &std::path::Path,
    plan: &std::path::Path,
) -> Result<(), crate::error::UsageError> {
    // The file itself, under whatever name: a symbolic or hard link, or
    // stdin (`--plan -`) when it is a file (`< plan.json`), not a pipe.
    let plan = match plan.as_os_str() == "-" {
        true => std::path::Path::new("/dev/stdin"),
        false => plan,
    };
    let Some(ours) = crate::platform::regular_file_id(plan) else {
        return Ok(());
    };
    let runs: Vec<u32> = crate::platform::open_by_this_program(db)
        .into_iter()
        .filter(|p| {
            runs_plan_file(*p).and_then(|f| crate::platform::regular_file_id(&f)) == Some(ours)
        })
        .collect();
    refuse_beside(
        db,
        &runs,
        (
            "a run of the same plan",
            "two runs of one plan would take turns applying its chunks, and the first would stop (exit 1) once it found its checkpoint moved; with --no-checkpoint both would apply every step",
        ),
        "Nothing ran",
        "run the plan again if that run did not finish (from the checkpoint, unless that run had --no-checkpoint, it goes on where that run stopped)",
    )
}

/// The plan file (`--plan` or `--sql`, as that process sees the path) that
/// process `pid` runs, when it is a batchsse `run` that writes, or a
/// `demo --keep DIR`'s `plan.json`, which it wrote beside its shop (and
/// prints the command to go on with).
fn runs_plan_file(pid: u32) -> Option<std::path::PathBuf> {
    let args = crate::platform::arguments(pid)?;
    if args
        .iter()
        .any(|a| a == "--dry-run" || a == "--create-only")
    {
        return None;
    }
    let seen = |given: &str| match given {
        "-" => crate::platform::path_seen_by(pid, "/dev/stdin"),
        _ => crate::platform::path_seen_by(pid, given),
    };
    match args.get(1).map(String::as_str) {
        Some("run") => seen(flag_value(&args, "--plan").or_else(|| flag_value(&args, "--sql"))?),
        Some("demo") => {
            let plan = seen(flag_value(&args, "--keep")?)?.join("plan.json");
            // Not a plan.json of the user's own, which it left alone.
            let sample = std::fs::read_to_string(&plan).is_ok_and(|t| t == super::demo::PLAN);
            sample.then_some(plan)
        }
        _ => None,
    }
}

/// The refusal of [`refuse_beside_a_run`] and its kin when `pids` (what
/// `going` names) have the file open.
fn refuse_beside(
    db: &std::path::Path,
    pids: &[u32],
    (going, why): (&str, &str),
    done: &str,
    then: &str,
) -> Result<(), crate::error::UsageError> {
    if pids.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = pids.iter().map(|p| format!("pid {p}")).collect();
    Err(crate::error::UsageError::new(format!(
        "another batchsse ({}) has {} open, {going} still going: {why}. {done}; let it finish (or cancel it: Ctrl-C, or `batchsse ctl URL cancel`), then {then}",
        pids.join(", "),
        file_name(db)
    )))
}

/// One block per plan, one line per recorded step (numbered from 1, as
/// the terminal shows steps).
fn as_text(path: &std::path::Path, records: &[Record]) -> String {
    let db = file_name(path);
    if records.is_empty() {
        return format!("no checkpoint recorded in {db} (no step in a {TABLE} table)\n");
    }
    let mut out = String::new();
    for (plan, steps) in by_plan(records) {
        let count = |state: &str| steps.iter().filter(|r| state_of(r) == state).count();
        let undoing = count(UNDOING_STATE);
        out += &format!(
            "plan {}: {} step{} recorded, {} done, {} partial{}\n",
            quoted(plan),
            steps.len(),
            plural(steps.len()),
            count("done"),
            count("partial"),
            match undoing {
                0 => String::new(),
                n => format!(", {n} partly taken back"),
            }
        );
        for r in &steps {
            out += &step_text(r);
        }
        if undoing > 0 {
            out += &undo_to_finish(path, plan);
        }
    }
    out
}

/// The state `list` shows of a step: `done`, `partial`, or
/// [`UNDOING_STATE`] once an undo has taken back part of it, whatever its
/// run left (it no longer holds that).
fn state_of(r: &Record) -> &'static str {
    match r.undoing {
        true => UNDOING_STATE,
        false => r.state.as_str(),
    }
}

/// What `--json` says of a step an undo took back in part and stopped.
const UNDOING_STATE: &str = "undoing";

/// One step's line.
fn step_text(r: &Record) -> String {
    let kept = match r.kept_bytes {
        0 => String::new(),
        n => format!(
            "; its TEMP tables' rows kept for a resume, {} bytes",
            thousands(n)
        ),
    };
    let (done, changed) = (
        format!("{} row{}", thousands(r.done), plural(r.done as usize)),
        thousands(r.changed),
    );
    let rows = format!("{done} ({changed} changed)");
    let what = match (&r.last_key, state_of(r)) {
        // What its run did, no longer what the step holds.
        (_, UNDOING_STATE) => {
            format!(
                "partly taken back by an undo that stopped part-way (its run: {done}, {changed} changed)"
            )
        }
        (Sql::Null, state) | (_, state @ "done") => format!("{state}, {rows}"),
        (key, state) => format!("{state} up to key {}, {rows}", key_text(key)),
    };
    format!(
        "  step {} {}: {what}, {}{kept}\n",
        r.step.saturating_add(1),
        quoted(&r.name),
        r.updated_at,
    )
}

/// Under a plan an undo stopped in part-way: the step marked so holds
/// only part of what its run applied, a run of the plan is refused, and
/// only that undo, run to its end, puts the plan in a state a run can
/// start from.
fn undo_to_finish(path: &std::path::Path, plan: &str) -> String {
    let (db, name) = (
        crate::human::shell_path(path),
        crate::human::shell_word(plan),
    );
    format!(
        "  an undo of plan {} stopped part-way (interrupted, or stopped by a conflict or an error); running the plan is refused until it ends: finish it with `batchsse undo --db {db} --plan {name}` (if it cannot finish, `batchsse checkpoint clear --db {db} --plan {name}` gives up on both the checkpoint and the record: the plan's next run then starts over, applying again what the undo had not taken back)\n",
        quoted(plan)
    )
}

/// Rows kept for a resume whose step has no record (a run killed while it
/// kept them), with how to remove them: listed, or the file's size grows
/// for no reason anyone can see.
fn strays_text(db: &std::path::Path, strays: &[(String, i64, u64)]) -> String {
    strays
        .iter()
        .map(|(plan, step, bytes)| {
            format!(
                "plan {}: rows of the TEMP tables its step {} made, {} bytes, kept by a run stopped before it recorded the step; `batchsse checkpoint clear --db {} --plan {}` removes them\n",
                quoted(plan),
                step.saturating_add(1),
                thousands(*bytes),
                crate::human::shell_path(db),
                crate::human::shell_word(plan),
            )
        })
        .collect()
}

fn strays_json(strays: &[(String, i64, u64)]) -> Value {
    strays
        .iter()
        .map(|(plan, step, bytes)| json!({"plan": plan, "index": step, "kept_bytes": bytes}))
        .collect()
}

fn as_json(db: &str, records: &[Record]) -> Value {
    let plans: Vec<Value> = by_plan(records)
        .into_iter()
        .map(|(plan, steps)| {
            let steps: Vec<Value> = steps
                .iter()
                .map(|r| {
                    json!({
                        "index": r.step,
                        "name": r.name,
                        "state": state_of(r),
                        "last_key": key_json(&r.last_key),
                        "done": r.done,
                        "changed": r.changed,
                        "updated_at": r.updated_at,
                        "kept_bytes": r.kept_bytes,
                    })
                })
                .collect();
            json!({"plan": plan, "steps": steps})
        })
        .collect();
    json!({"db": db, "plans": plans})
}

/// Records grouped by plan, in order (they come sorted by plan).
fn by_plan(records: &[Record]) -> Vec<(&str, Vec<&Record>)> {
    let mut out: Vec<(&str, Vec<&Record>)> = Vec::new();
    for r in records {
        match out.last_mut() {
            Some((p, steps)) if *p == r.plan => steps.push(r),
            _ => out.push((&r.plan, vec![r])),
        }
    }
    out
}

/// A key as a person reads it: numbers bare, text quoted, a blob as SQL's
/// `x'…'`.
fn key_text(key: &Sql) -> String {
    match key {
        Sql::Null => "NULL".into(),
        Sql::Integer(i) => i.to_string(),
        Sql::Real(f) => f.to_string(),
        Sql::Text(t) => quoted(t),
        Sql::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// A key in JSON: numbers and text as themselves, a blob as `{"hex": …}`
/// (so it cannot be mistaken for text).
fn key_json(key: &Sql) -> Value {
    match key {
        Sql::Null => Value::Null,
        Sql::Integer(i) => json!(i),
        Sql::Real(f) => json!(f),
        Sql::Text(t) => json!(t),
        Sql::Blob(b) => json!({"hex": hex(b)}),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The database's file as a message names it, on one line.
pub(super) fn file_name(path: &std::path::Path) -> String {
    crate::human::shown_path(path)
}

#[cfg(test)]
mod tests {
    use super::takes_back;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn an_undo_takes_back_a_plan_named_or_one_of_its_runs_unless_it_only_looks() {
        let runs = ["r1".to_owned()];
        let yes = |l: &str| takes_back(&args(l), "bump", &runs);
        assert!(yes("batchsse undo --db f --plan bump"));
        assert!(yes("batchsse undo --plan=bump --db f"));
        assert!(yes("batchsse undo --db f --run r1 --sleep 5"));
        assert!(!yes("batchsse undo --db f --plan other"));
        assert!(!yes("batchsse undo --db f --run r2"));
        assert!(!yes("batchsse undo --db f --plan bump --dry-run"));
        assert!(!yes("batchsse undo list --db f"));
        assert!(!yes("batchsse undo clear --db f --plan bump"));
        assert!(!yes("batchsse run --db f --plan bump"));
        assert!(!yes("batchsse undo --db f --plan"));
    }
}
