//! `batchsse undo clear`: removes undo records, but never so that what is
//! left of a plan's record would pass for the whole of what it applied.
//! An undo takes a step's record for all the step holds: once it has taken
//! back the last of it, it clears the step's checkpoint and says the plan
//! is fully taken back. So a run's record goes on its own only when no
//! other run of its plan recorded one of its steps, and no undo of its plan
//! has stopped part-way (only the record can say what such a step still
//! holds). `--plan` removes a plan's records together, which leaves the
//! plan applied and checkpointed, no longer undoable.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use rusqlite::Connection;

use crate::app::checkpoint::{file_name, refuse_under_a_live_run};
use crate::app::docs::print;
use crate::cli::UndoClearArgs;
use crate::error::UsageError;
use crate::human::{plural, quoted, shell_path, shell_word, thousands};
use crate::run::undo::store::{self, KeptConflicts, RunRecord, Shared};
use crate::run::{self as runner, checkpoint};

/// Which records to remove.
#[derive(Clone, Copy)]
enum Which<'a> {
    Run(&'a str),
    Plan(&'a str),
    /// Those last recorded longer ago than this many seconds.
    Older(i64),
    All,
}

/// What a clear removes, and what it keeps back.
struct Picked {
    /// The records removed.
    chosen: Vec<RunRecord>,
    /// The runs taken back whole whose kept conflicts are removed.
    reports: Vec<KeptConflicts>,
    /// Runs `--older-than` would have removed, kept, with why.
    held: Vec<(RunRecord, Hold)>,
    /// Runs and reports in the file before the clear.
    total: usize,
    /// `--plan`: whether the checkpoint holds the plan.
    checkpointed: Option<bool>,
}

/// Why a run's record must stay.
#[derive(Debug, PartialEq)]
enum Hold {
    /// Run `other`, whose record stays, recorded `step` too.
    Shares { other: String, step: i64 },
    /// An undo of its plan stopped part-way, with these steps taken back in
    /// part.
    Undoing(Vec<i64>),
}

pub fn clear(args: UndoClearArgs) -> anyhow::Result<ExitCode> {
    let conn = runner::open_db_to_tidy(&args.db, Duration::from_millis(args.busy_timeout))?;
    refuse_under_a_live_run(
        &args.db,
        "an undo under way would find its record gone and stop short of taking the run back, while saying it finished, and a run recording would record what no undo can take back",
    )?;
    let older = args.older_than.as_deref().map(age).transpose()?;
    let which = match (&args.run, &args.plan, older) {
        (Some(run), _, _) => Which::Run(run),
        (None, Some(plan), _) => Which::Plan(plan),
        (None, None, Some(secs)) => Which::Older(secs),
        (None, None, None) => Which::All,
    };
    let (picked, dropped) = store::clear(&conn, args.all, || {
        let picked = pick(&conn, &args.db, which)?;
        let ids = picked
            .chosen
            .iter()
            .map(|r| r.run.clone())
            .chain(picked.reports.iter().map(|k| k.run.clone()))
            .collect();
        Ok((ids, picked))
    })?;
    print(said(&args, which, &picked, dropped).as_bytes())
}

/// Picks the records `which` names, inside the clear's transaction:
/// refused (nothing removed) when removing them would leave a plan whose
/// remaining record an undo would take for all it applied; under
/// `--older-than`, such runs are kept instead.
fn pick(conn: &Connection, db: &Path, which: Which<'_>) -> Result<Picked, UsageError> {
    let runs = store::runs(conn)?;
    let kept = store::kept_conflicts(conn)?;
    let total = runs.len() + kept.len();
    let any_reports = !kept.is_empty();
    let chosen_at = |run: &str, plan: Option<&str>, at: &str| match which {
        Which::Run(id) => run == id,
        // Of the runs taken back whole, --plan leaves the conflicts kept:
        // they no longer bear on the plan, only report on its undo.
        Which::Plan(p) => plan == Some(p),
        Which::Older(secs) => older_than(conn, at, secs),
        Which::All => true,
    };
    let mut chosen: Vec<RunRecord> = runs
        .into_iter()
        .filter(|r| chosen_at(&r.run, Some(&r.plan), &r.last_at))
        .collect();
    let reports: Vec<KeptConflicts> = kept
        .into_iter()
        .filter(|k| chosen_at(&k.run, None, &k.last_at))
        .collect();
    match which {
        Which::Run(id) if chosen.is_empty() && reports.is_empty() => {
            return Err(UsageError::new(format!(
                "no undo record of run {} in {}; `batchsse undo list --db {}` shows them",
                quoted(id),
                file_name(db),
                shell_path(db)
            )));
        }
        Which::Plan(plan) if chosen.is_empty() => {
            return Err(no_plan(conn, db, plan, any_reports));
        }
        _ => {}
    }
    let guard = Guard::read(conn, &chosen)?;
    let held = match which {
        Which::Older(_) => guard.hold(&mut chosen),
        _ => {
            guard.refuse(db, which, &chosen)?;
            Vec::new()
        }
    };
    let checkpointed = match which {
        Which::Plan(plan) => {
            Some(checkpoint::holds(conn, plan).map_err(|e| store::not_cleared(conn, &e))?)
        }
        _ => None,
    };
    Ok(Picked {
        chosen,
        reports,
        held,
        total,
        checkpointed,
    })
}

/// `--plan` naming a plan with no record: most often a mistyped name, or
/// a plan taken back whole, whose undo's conflicts `--plan` leaves (they
/// name no plan): then it says what removes those.
fn no_plan(conn: &Connection, db: &Path, plan: &str, any_reports: bool) -> UsageError {
    let none = super::nothing_recorded_in(conn, db, &format!("plan {}", quoted(plan)));
    if !any_reports {
        return none;
    }
    UsageError::new(format!(
        "{none}; the conflicts kept by undos of runs taken back whole stay as their report: `batchsse undo clear --db {} --run ID` removes a run's (the list names each)",
        shell_path(db)
    ))
}

/// What decides whether a run's record may go: which runs share a step
/// of their plan, and which steps an undo has taken back in part.
struct Guard {
    shared: Vec<Shared>,
    undoing: Vec<(String, i64)>,
}

impl Guard {
    /// Read only when a record is to go (the checkpoint need not be read
    /// to clear the conflicts of runs taken back).
    fn read(conn: &Connection, chosen: &[RunRecord]) -> Result<Guard, UsageError> {
        if chosen.is_empty() {
            return Ok(Guard {
                shared: Vec::new(),
                undoing: Vec::new(),
            });
        }
        let read = || -> rusqlite::Result<Guard> {
            Ok(Guard {
                shared: store::shared_steps(conn)?,
                undoing: checkpoint::undoing(conn)?,
            })
        };
        read().map_err(|e| store::not_cleared(conn, &e))
    }

    /// The steps of `plan` taken back in part, numbered from 1.
    fn undoing_of(&self, plan: &str) -> Vec<i64> {
        self.undoing
            .iter()
            .filter(|(p, _)| p == plan)
            .map(|(_, s)| s.saturating_add(1))
            .collect()
    }

    /// The steps `run` shares with runs that `stay`, as (other run, step
    /// numbered from 1).
    fn shares(&self, run: &str, stays: impl Fn(&str) -> bool) -> Vec<(&str, i64)> {
        self.shared
            .iter()
            .filter(|s| s.run == run && stays(&s.other))
            .map(|s| (s.other.as_str(), s.step.saturating_add(1)))
            .collect()
    }

    /// Why `r` must stay when the runs `going` go, if it must.
    fn why_held(&self, r: &RunRecord, going: &BTreeSet<&str>) -> Option<Hold> {
        let undoing = self.undoing_of(&r.plan);
        if !undoing.is_empty() {
            return Some(Hold::Undoing(undoing));
        }
        let shares = self.shares(&r.run, |o| !going.contains(o));
        let (other, step) = shares.first()?;
        Some(Hold::Shares {
            other: (*other).to_owned(),
            step: *step,
        })
    }

    /// Takes out of `chosen` (`--older-than`) the runs that must stay, and
    /// those that share a step with one of them, and so on: the record
    /// of a run kept must not be left to pass for all its step holds.
    fn hold(&self, chosen: &mut Vec<RunRecord>) -> Vec<(RunRecord, Hold)> {
        let mut held = Vec::new();
        loop {
            let going: BTreeSet<&str> = chosen.iter().map(|r| r.run.as_str()).collect();
            let found = chosen
                .iter()
                .enumerate()
                .find_map(|(i, r)| self.why_held(r, &going).map(|why| (i, why)));
            let Some((i, why)) = found else { break };
            held.push((chosen.remove(i), why));
        }
        // Oldest first, as `undo list` shows them.
        held.sort_by(|a, b| a.0.first_at.cmp(&b.0.first_at));
        held
    }

    /// Refuses `--run`, `--plan` and `--all` (nothing removed) when the
    /// records `chosen` would leave a plan's rest to pass for all it
    /// applied.
    fn refuse(&self, db: &Path, which: Which<'_>, chosen: &[RunRecord]) -> Result<(), UsageError> {
        let plans: BTreeSet<&str> = chosen.iter().map(|r| r.plan.as_str()).collect();
        for plan in &plans {
            let steps = self.undoing_of(plan);
            if steps.is_empty() {
                continue;
            }
            let runs: Vec<&str> = chosen
                .iter()
                .filter(|r| r.plan == *plan)
                .map(|r| r.run.as_str())
                .collect();
            let what = match which {
                Which::Run(id) => format!("the undo record of run {id}"),
                Which::Plan(_) => format!("the undo records of plan {}", quoted(plan)),
                _ => "every undo record".to_owned(),
            };
            let others = matches!(which, Which::All) && plans.len() > 1;
            return Err(undoing_refusal(db, &what, plan, (&steps, &runs), others));
        }
        match (which, chosen) {
            (Which::Run(_), [r]) => match self.shares(&r.run, |_| true) {
                shares if shares.is_empty() => Ok(()),
                shares => Err(shares_refusal(db, r, &shares)),
            },
            _ => Ok(()),
        }
    }
}

/// "step 2" or "steps 1, 2".
fn steps_text(steps: &[i64]) -> String {
    let list: Vec<String> = steps.iter().map(i64::to_string).collect();
    format!("step{} {}", plural(steps.len()), list.join(", "))
}

/// The refusal of a clear that would take away the record an undo of
/// `plan` that stopped part-way (at `steps`, with `runs` left) still has
/// to take back. `others`: other plans' records were to go too.
fn undoing_refusal(
    db: &Path,
    what: &str,
    plan: &str,
    (steps, runs): (&[i64], &[&str]),
    others: bool,
) -> UsageError {
    let (db_word, plan_word) = (shell_path(db), shell_word(plan));
    let [that, holds] = match steps.len() {
        1 => ["that step", "holds"],
        _ => ["those steps", "hold"],
    };
    let meanwhile = match others {
        true => format!(
            "; the other plans' records can go meanwhile with `batchsse undo clear --db {db_word} --plan NAME`"
        ),
        false => String::new(),
    };
    UsageError::new(format!(
        "cannot clear {what}: an undo of plan {} stopped part-way (interrupted, or stopped by a conflict or an error), leaving {} taken back only in part, and the plan's record (run{} {}) is what it still has to take back. Without it nothing could say what {that} still {holds}: a run of the plan would be refused, and the undo would find no record. Nothing was removed. Finish the undo with `batchsse undo --db {db_word} --plan {plan_word}`; if it cannot finish, `batchsse checkpoint clear --db {db_word} --plan {plan_word}` gives up on both the checkpoint and the record (the plan's next run then starts over, applying again what the undo had not taken back){meanwhile}",
        quoted(plan),
        steps_text(steps),
        plural(runs.len()),
        runs.join(", ")
    ))
}

/// The refusal of `--run` for run `r`, which shares steps with runs whose
/// records stay (`shares`: other run, step).
fn shares_refusal(db: &Path, r: &RunRecord, shares: &[(&str, i64)]) -> UsageError {
    let mut others: Vec<&str> = shares.iter().map(|(o, _)| *o).collect();
    others.sort_unstable();
    others.dedup();
    let with: Vec<String> = others
        .iter()
        .map(|o| {
            let steps: Vec<i64> = shares
                .iter()
                .filter(|(x, _)| x == o)
                .map(|(_, s)| *s)
                .collect();
            format!("{} with run {o}", steps_text(&steps))
        })
        .collect();
    let [stays, that] = match others.len() {
        1 => ["whose record stays", "that record"],
        _ => ["whose records stay", "those records"],
    };
    let (db_word, plan_word) = (shell_path(db), shell_word(&r.plan));
    UsageError::new(format!(
        "cannot clear the undo record of run {} (plan {}) alone: it shares {}, {stays}. An undo of the plan would take {that} for all the plan applied there: it would clear the checkpoint and say the plan is fully taken back while the change of run {} stays, and the plan's next run would apply that change a second time. Nothing was removed. Take the plan back first (`batchsse undo --db {db_word} --plan {plan_word}`), or clear all of its records together (`batchsse undo clear --db {db_word} --plan {plan_word}`: the plan then stays applied and checkpointed, and can no longer be taken back)",
        r.run,
        quoted(&r.plan),
        with.join(", and "),
        r.run
    ))
}

/// What the clear says: one line per record or report removed, per run
/// kept back, and what is left.
fn said(args: &UndoClearArgs, which: Which<'_>, p: &Picked, dropped: bool) -> String {
    let db = file_name(&args.db);
    let mut text = cleared_text(&db, &p.chosen, &p.reports);
    for (r, why) in &p.held {
        text += &held_text(&args.db, r, why);
    }
    if let (Which::Plan(plan), Some(checkpointed)) = (which, p.checkpointed) {
        text += &plan_left_text(&db, plan, checkpointed);
    }
    let none = p.chosen.is_empty() && p.reports.is_empty() && p.held.is_empty();
    match (none, &args.older_than) {
        (true, Some(age)) if p.total > 0 => {
            text += &format!(
                "no undo record in {db} is older than {}; {} run{} kept (`batchsse undo list --db {}` shows them)\n",
                age.trim(),
                p.total,
                plural(p.total),
                shell_path(&args.db)
            );
        }
        (true, _) => text += &format!("no undo record to clear in {db}\n"),
        _ => {}
    }
    if dropped {
        text += &format!("dropped the undo tables: no undo record is left in {db}\n");
    }
    text
}

/// One line per record or report removed.
fn cleared_text(db: &str, chosen: &[RunRecord], reports: &[KeptConflicts]) -> String {
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

/// The line for a run `--older-than` kept, and why.
fn held_text(db: &Path, r: &RunRecord, why: &Hold) -> String {
    let (db_word, plan_word) = (shell_path(db), shell_word(&r.plan));
    let why = match why {
        Hold::Shares { other, step } => format!(
            "it shares step {step} with run {other}, whose record stays, and an undo of the plan would take that record for all the plan applied there; take the plan back (`batchsse undo --db {db_word} --plan {plan_word}`), or clear its records together (`batchsse undo clear --db {db_word} --plan {plan_word}`)"
        ),
        Hold::Undoing(steps) => format!(
            "an undo of the plan stopped part-way, leaving {} taken back only in part, and only the plan's record can say what is left to take back; finish it with `batchsse undo --db {db_word} --plan {plan_word}`",
            steps_text(steps)
        ),
    };
    format!(
        "kept the undo record of run {} (plan {}): {why}\n",
        r.run,
        quoted(&r.plan)
    )
}

/// What `--plan` leaves of the plan: applied, and, with a checkpoint,
/// skipped by its next run.
fn plan_left_text(db: &str, plan: &str, checkpointed: bool) -> String {
    match checkpointed {
        true => format!(
            "plan {} stays applied and checkpointed, and can no longer be taken back: its next run skips what it applied (and goes on where it stopped, if it stopped part-way), so nothing is applied twice\n",
            quoted(plan)
        ),
        false => format!(
            "plan {} stays applied, and can no longer be taken back; {db} holds no checkpoint of it (a run with --no-checkpoint keeps none), so its next run would apply it again\n",
            quoted(plan)
        ),
    }
}

/// `90s`, `30m`, `12h`, `7d`, `2w` (or a bare `0`) in seconds. A bare
/// number is refused: `7` could mean seven seconds or seven days, and
/// taking it as seconds would remove records the user meant to keep.
fn age(s: &str) -> Result<i64, UsageError> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "" if !n.is_empty() && n.bytes().all(|b| b == b'0') => 1,
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if mult > 0 => Ok(n.saturating_mul(mult)),
        // Digits and a unit, but more than any age: as good as "never".
        Err(e) if mult > 0 && *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(i64::MAX),
        _ if unit.is_empty() && !n.is_empty() => Err(UsageError::new(format!(
            "--older-than needs a unit: {n} alone could mean seconds or days; write {n}s, {n}m, {n}h, {n}d or {n}w (seconds, minutes, hours, days, weeks); nothing was removed"
        ))),
        _ => Err(UsageError::new(format!(
            "--older-than takes a whole number followed by s, m, h, d or w (seconds, minutes, hours, days, weeks), such as 30m, 12h or 7d; got {}; nothing was removed",
            quoted(s)
        ))),
    }
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
    use super::*;

    #[test]
    fn ages_are_read_or_refused_with_the_units() {
        for (text, secs) in [
            ("0", 0),
            ("000", 0),
            ("45s", 45),
            ("30m", 1800),
            ("12h", 43_200),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("99999999999d", 8_639_999_999_913_600),
            ("999999999999999999d", i64::MAX),
            ("99999999999999999999d", i64::MAX),
        ] {
            assert_eq!(age(text).unwrap(), secs, "{text}");
        }
        for bad in ["", "-1d", "1y", "7D", "1.5h", "+5m", "1 d", "d", "garbage"] {
            let why = age(bad).unwrap_err().to_string();
            assert!(why.contains("followed by s, m, h, d or w"), "{bad}: {why}");
        }
        // A bare number could mean seconds or days: refused, with both.
        for bare in ["7", "45", "99999999999999999999"] {
            let why = age(bare).unwrap_err().to_string();
            assert!(
                why.contains(&format!(
                    "{bare} alone could mean seconds or days; write {bare}s"
                )),
                "{bare}: {why}"
            );
        }
    }

    fn record(run: &str, plan: &str, at: &str) -> RunRecord {
        RunRecord {
            run: run.into(),
            plan: plan.into(),
            chunks: 1,
            rows: 1,
            bytes: 1,
            first_at: at.into(),
            last_at: at.into(),
        }
    }

    fn shared(pairs: &[(&str, &str, i64)]) -> Vec<Shared> {
        pairs
            .iter()
            .flat_map(|(a, b, step)| {
                [(a, b), (b, a)].map(|(run, other)| Shared {
                    run: (*run).into(),
                    other: (*other).into(),
                    plan: "p".into(),
                    step: *step,
                })
            })
            .collect()
    }

    /// `--older-than` keeps a run that shares a step with one that stays,
    /// and then the runs sharing a step with that one: a chain of resumes
    /// stays whole. A run of a plan an undo stopped in stays too; other
    /// runs go.
    #[test]
    fn older_than_keeps_a_chain_of_runs_that_share_steps_with_one_that_stays() {
        let guard = Guard {
            shared: shared(&[("r1", "r2", 0), ("r2", "r3", 1)]),
            undoing: vec![("q".into(), 2)],
        };
        // r3 is newer: not chosen.
        let mut chosen = vec![
            record("r1", "p", "1"),
            record("r2", "p", "2"),
            record("alone", "p", "3"),
            record("q1", "q", "4"),
        ];
        let held = guard.hold(&mut chosen);
        let going: Vec<&str> = chosen.iter().map(|r| r.run.as_str()).collect();
        assert_eq!(going, ["alone"]);
        let held: Vec<(&str, &Hold)> = held.iter().map(|(r, h)| (r.run.as_str(), h)).collect();
        let shares = |other: &str, step| Hold::Shares {
            other: other.into(),
            step,
        };
        assert_eq!(
            held,
            [
                ("r1", &shares("r2", 1)),
                ("r2", &shares("r3", 2)),
                ("q1", &Hold::Undoing(vec![3]))
            ]
        );
    }

    /// Two runs that share a step go together (`--older-than` takes both).
    #[test]
    fn runs_that_share_a_step_go_together() {
        let guard = Guard {
            shared: shared(&[("r1", "r2", 0)]),
            undoing: Vec::new(),
        };
        let mut chosen = vec![record("r1", "p", "1"), record("r2", "p", "2")];
        assert!(guard.hold(&mut chosen).is_empty());
        assert_eq!(chosen.len(), 2);
    }
}
