//! `--progress github`: GitHub Actions workflow commands around the plain
//! lines (a `::group::` per step, `::error` for a failed step, for an
//! error of the run's own and for a command's fatal error, `::warning` for
//! warnings); with `GITHUB_STEP_SUMMARY` set, a Markdown table of the steps
//! (or the fatal error) appended to that file at the end; with
//! `GITHUB_OUTPUT` set, the outcome as the step's outputs. Every line
//! printed in this mode is one physical line: a CR or LF from a step name,
//! an SQL error or a message is shown as `\r`/`\n` (escaped as `%0D`/`%0A`
//! inside a command), so no text can start a line with `::` (and `##[`,
//! the older form the runner finds anywhere, as `##\[`).

use std::io::Write;

use crate::events::{Finished, Level, Message, Start, StepEvent, StepState};
use crate::human::{duration, thousands};

/// A human line as one physical line: GitHub reads every line of the log
/// for a workflow command (`::…`), so CR and LF inside a step name or an
/// error are shown as `\r` and `\n` and a line always starts with the text
/// batchsse put there. The runner also takes the older form, `##[name]…`,
/// anywhere in a line that is not a `::` command: it is shown as `##\[`.
pub fn one_line(s: &str) -> String {
    if !s.contains(['\r', '\n']) && !s.contains("##[") {
        return s.to_owned();
    }
    s.replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace("##[", "##\\[")
}

/// A line of text (not a command) that GitHub's runner would still read
/// as one: it trims the white space before a line's first `::` (the
/// run's error is printed indented under its outcome, and may begin with
/// anything a stream sends). Such a line is shown with `\` before that
/// `::`.
pub fn not_a_command(line: &str) -> std::borrow::Cow<'_, str> {
    let text = line.trim_start();
    if !text.starts_with("::") {
        return line.into();
    }
    let indent = &line[..line.len() - text.len()];
    format!("{indent}\\{text}").into()
}

/// Whether stderr is a GitHub Actions job's log (`GITHUB_ACTIONS=true`,
/// stderr not a terminal). Every line of human text is then one physical
/// line whatever `--progress` says: a run under `--progress json` (as in
/// the README's recipe) or a forced `plain` still writes to that log.
pub fn in_actions() -> bool {
    use std::io::IsTerminal;
    !std::io::stderr().is_terminal() && std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Whether a command's fatal error is shown the GitHub way (see [`fatal`]):
/// in an Actions job, as the rest of the output is, or when the command
/// was given `--progress github`.
pub fn annotates_errors(matches: &clap::ArgMatches) -> bool {
    let github = matches.subcommand().is_some_and(|(_, m)| {
        m.try_get_one::<crate::cli::ProgressMode>("progress")
            .ok()
            .flatten()
            == Some(&crate::cli::ProgressMode::Github)
    });
    github || in_actions()
}

/// A fatal error (`batchsse: MESSAGE` elsewhere) as a GitHub Actions job
/// shows it: one `::error::` line, so that a plan refused before its run
/// (exit 2) is an annotation as a failed step is, and, with
/// `GITHUB_STEP_SUMMARY` set, `who` and the exit status with the message
/// appended to the step summary. The lines to print, in order.
pub fn fatal(who: &str, code: u8, message: &str) -> Vec<String> {
    let mut out = vec![format!(
        "::error::{}",
        escape_data(&format!("batchsse: {message}"))
    )];
    let md = format!(
        "### {who}: failed (exit {code})\n\n{}\n\n",
        cell_of(message, DETAIL_CHARS)
    );
    out.extend(append_summary(&md));
    out
}

/// Appends `md` to the step summary when `GITHUB_STEP_SUMMARY` is set;
/// a warning annotation to print if it cannot.
fn append_summary(md: &str) -> Option<String> {
    append_to("GITHUB_STEP_SUMMARY", "the step summary", md)
}

/// Appends `text` to the file the environment variable `var` names, when
/// it is set; a warning annotation naming `what` to print if it cannot.
fn append_to(var: &str, what: &str, text: &str) -> Option<String> {
    let path = std::env::var_os(var).filter(|p| !p.is_empty())?;
    // Without waiting: a FIFO no one reads must not hold the run for ever.
    let appended = crate::platform::open_to_append(std::path::Path::new(&path))
        .and_then(|mut file| file.write_all(text.as_bytes()));
    let e = appended.err()?;
    Some(format!(
        "::warning::{}",
        escape_data(&format!(
            "cannot append {what} to {} ({e})",
            std::path::Path::new(&path).display()
        ))
    ))
}

/// One step output as `GITHUB_OUTPUT` takes it: `name=value`, or for a
/// value with a line break (an SQL error) `name<<END`, the value, `END`,
/// with an end marker the value does not hold.
fn output(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}={value}\n");
    }
    let mut end = "BATCHSSE_END".to_owned();
    while value.contains(&end) {
        end.push('_');
    }
    format!("{name}<<{end}\n{value}\n{end}\n")
}

/// A command's message, per the workflow-command rules.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A command's property value (`title=…`): the message's rules, plus `:`
/// and `,`, which would end the value.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// What the GitHub output remembers of a run: its steps and how each ended.
#[derive(Debug, Default)]
pub struct Github {
    plan: String,
    run_id: String,
    db: String,
    /// The run is a `batchsse undo`: its summary says so, as its
    /// dashboard's title does, apart from the run it takes back.
    undo: bool,
    steps: Vec<(String, Option<StepEvent>)>,
    group_open: bool,
    /// False for a watch that began after `start` (`?last_event_id=N`):
    /// the steps are then learnt from their own events.
    started: bool,
}

impl Github {
    pub fn start(&mut self, s: &Start) {
        self.plan = s.plan.clone();
        self.run_id = s.run_id.clone();
        self.db = s.db.clone();
        self.undo = !s.kind.is_run();
        self.steps = s.steps.iter().map(|s| (s.name.clone(), None)).collect();
        self.group_open = false;
        self.started = true;
    }

    /// The commands to print before `line`, the step's plain line.
    pub fn step(&mut self, s: &StepEvent, label: &str, line: String) -> Vec<String> {
        let mut out = Vec::new();
        if s.state == StepState::Running {
            out.extend(self.end_group());
            out.push(format!("::group::{}", escape_data(label)));
            self.group_open = true;
            return out;
        }
        out.push(line);
        out.extend(self.end_group());
        if s.state == StepState::Failed {
            let how = if s.cancelled {
                "was cancelled"
            } else {
                "failed"
            };
            let title = format!("step {} ({}) {how}", s.index + 1, s.name);
            out.push(format!(
                "::error title={}::{}",
                escape_property(&title),
                escape_data(s.error.as_deref().unwrap_or("unknown error"))
            ));
        }
        if !self.started && self.steps.len() <= s.index {
            self.steps.resize(s.index + 1, (String::new(), None));
        }
        if let Some(slot) = self.steps.get_mut(s.index) {
            slot.0.clone_from(&s.name);
            slot.1 = Some(s.clone());
        }
        out
    }

    /// A warning or an error as an annotation; `None` for `info`.
    pub fn annotation(m: &Message) -> Option<String> {
        let command = match m.status {
            Level::Warn => "warning",
            Level::Error => "error",
            Level::Info => return None,
        };
        Some(format!("::{command}::{}", escape_data(&m.message)))
    }

    /// Closes a group left open, and appends the summary if asked for.
    pub fn finished(&mut self, f: &Finished, line: &str) -> Vec<String> {
        let mut out: Vec<String> = self.end_group().into_iter().collect();
        // The outcome, then the error (if any) on its own line, each one
        // physical line once the renderer has made it so.
        let (outcome, detail) = line.split_once('\n').unwrap_or((line, ""));
        out.push(format!("batchsse: {outcome}"));
        if !detail.trim().is_empty() {
            out.push(not_a_command(detail).into_owned());
        }
        out.extend(append_summary(&self.summary(f, line)));
        out.extend(append_to(
            "GITHUB_OUTPUT",
            "the step outputs",
            &self.outputs(f),
        ));
        out
    }

    /// The run's outcome as the job step's outputs, for the steps after
    /// it (`steps.ID.outputs.rows_changed`): every field of `finished`
    /// (`status`, `rows_changed`, `error`, `undo_bytes`, …), by the same
    /// names, beside the run's `run_id` and `plan` (a watch that began
    /// after `start` knows neither).
    fn outputs(&self, f: &Finished) -> String {
        let mut out = String::new();
        if self.started {
            out += &output("run_id", &self.run_id);
            out += &output("plan", &cut(&self.plan, DETAIL_CHARS));
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(f) else {
            return out;
        };
        for (name, value) in fields {
            match value {
                // An error may be megabytes (a trigger's `RAISE` message);
                // the log has it whole.
                serde_json::Value::String(s) => out += &output(&name, &cut(&s, DETAIL_CHARS)),
                serde_json::Value::Null => {}
                other => out += &output(&name, &other.to_string()),
            }
        }
        out
    }

    fn end_group(&mut self) -> Option<String> {
        std::mem::take(&mut self.group_open).then(|| "::endgroup::".to_owned())
    }

    /// The run as Markdown: a heading, a table of the steps, the outcome.
    pub fn summary(&self, f: &Finished, line: &str) -> String {
        let heading = if self.started {
            format!(
                "batchsse: {}{} on {}",
                if self.undo { "undo of " } else { "" },
                cell_of(&self.plan, NAME_CHARS),
                cell_of(&self.db, NAME_CHARS)
            )
        } else {
            "batchsse: the steps seen since the watch began".to_owned()
        };
        let mut md = format!(
            "### {heading}\n\n| # | step | state | rows changed | time |\n| ---: | --- | --- | ---: | ---: |\n"
        );
        md += &self.table_rows();
        let (outcome, detail) = line.split_once('\n').unwrap_or((line, ""));
        md += &format!("\n**{}**\n", cell_of(outcome, DETAIL_CHARS));
        if f.error.is_some() && !detail.trim().is_empty() {
            md += &format!("\n{}\n", cell_of(detail.trim(), DETAIL_CHARS));
        }
        md + "\n"
    }

    /// The table's rows, at most [`ROWS_BUDGET`] bytes of them: past it,
    /// only the failed steps, after a row that says how many were left out.
    fn table_rows(&self) -> String {
        let seen = |end: &Option<StepEvent>| self.started || end.is_some();
        let (mut listed, mut failed, mut left_out) = (String::new(), String::new(), 0usize);
        for (i, (name, end)) in self.steps.iter().enumerate().filter(|(_, s)| seen(&s.1)) {
            let (state, changed, took) = match end {
                Some(e) => (state_word(e), thousands(e.changed), duration(e.elapsed_ms)),
                None => ("not run", String::new(), String::new()),
            };
            let row = format!(
                "| {} | {} | {state} | {changed} | {took} |\n",
                i + 1,
                cell_of(name, NAME_CHARS)
            );
            if left_out == 0 && listed.len() + row.len() <= ROWS_BUDGET {
                listed += &row;
            } else if end.as_ref().is_some_and(|e| e.state == StepState::Failed) {
                failed += &row;
            } else {
                left_out += 1;
            }
        }
        if left_out > 0 {
            listed += &format!(
                "| … | {} more {} not listed (GitHub shows no step summary over 1 MiB) | | | |\n",
                thousands(left_out as u64),
                if left_out == 1 { "step" } else { "steps" }
            );
        }
        listed + &failed
    }
}

/// The most characters of a name (a step's, the plan's, the file's) a
/// summary shows, and of an outcome or an error (in an output too).
const NAME_CHARS: usize = 200;
const DETAIL_CHARS: usize = 4000;
/// The most bytes the summary's table rows take: GitHub drops a step's
/// whole summary past 1 MiB ("upload aborted"), and the job's other
/// commands may write to the same step's summary.
const ROWS_BUDGET: usize = 384 * 1024;

impl Drop for Github {
    /// A group still open when the output ends (a watch whose run was
    /// killed, or that was stopped) is closed, so that the error printed
    /// next is not folded away inside the last step's group.
    fn drop(&mut self) {
        if let Some(line) = self.end_group() {
            crate::error::print_line(&line);
        }
    }
}

fn state_word(s: &StepEvent) -> &'static str {
    match s.state {
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed if s.cancelled => "**cancelled**",
        StepState::Failed => "**failed**",
        StepState::Skipped => "skipped",
    }
}

/// [`cell`] of at most `max` characters of `s`, with `…` when cut.
fn cell_of(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => cell(&s[..at]) + "…",
        None => cell(s),
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// Text safe in a table cell: no line breaks, no column bars, no markup.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            '|' | '\\' | '`' | '*' | '_' | '<' | '>' | '[' | ']' | '&' | '~' | '!' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_properties_are_escaped_per_the_workflow_command_rules() {
        for (raw, data, property) in [
            ("plain", "plain", "plain"),
            ("", "", ""),
            ("100%", "100%25", "100%25"),
            ("%0A", "%250A", "%250A"),
            ("a\nb", "a%0Ab", "a%0Ab"),
            ("a\r\nb", "a%0D%0Ab", "a%0D%0Ab"),
            ("\r", "%0D", "%0D"),
            ("step 1: x, y", "step 1: x, y", "step 1%3A x%2C y"),
            ("::error::x", "::error::x", "%3A%3Aerror%3A%3Ax"),
            ("naïve 🔑", "naïve 🔑", "naïve 🔑"),
            ("%,:\n", "%25,:%0A", "%25%2C%3A%0A"),
        ] {
            assert_eq!(escape_data(raw), data, "data {raw:?}");
            assert_eq!(escape_property(raw), property, "property {raw:?}");
        }
    }

    #[test]
    fn a_failed_step_closes_its_group_with_an_error_annotation() {
        let mut g = Github::default();
        let running = StepEvent {
            index: 1,
            name: "fix, then: check".into(),
            state: StepState::Running,
            done: 0,
            total: 0,
            changed: 0,
            elapsed_ms: 0,
            error: None,
            cancelled: false,
        };
        assert_eq!(
            g.step(&running, "[2/2] fix\nnow", String::new()),
            ["::group::[2/2] fix%0Anow"]
        );
        let failed = StepEvent {
            state: StepState::Failed,
            error: Some("no such table: x\n100% sure".into()),
            ..running.clone()
        };
        assert_eq!(
            g.step(&failed, "[2/2] fix", "[2/2] fix: FAILED".into()),
            [
                "[2/2] fix: FAILED",
                "::endgroup::",
                "::error title=step 2 (fix%2C then%3A check) failed::no such table: x%0A100%25 sure",
            ]
        );
        // A cancel is no failure of the step's own.
        let cancelled = StepEvent {
            state: StepState::Failed,
            error: Some("interrupted during step 2".into()),
            cancelled: true,
            ..running.clone()
        };
        g.step(&running, "[2/2] fix", String::new());
        let lines = g.step(&cancelled, "[2/2] fix", "[2/2] fix: cancelled".into());
        assert_eq!(
            lines.last().map(String::as_str),
            Some(
                "::error title=step 2 (fix%2C then%3A check) was cancelled::interrupted during step 2"
            )
        );
        assert_eq!(state_word(&cancelled), "**cancelled**");
        assert_eq!(state_word(&failed), "**failed**");
    }

    #[test]
    fn warnings_and_errors_become_annotations() {
        let m = |status| Message {
            target: serde_json::json!({}),
            status,
            message: "50% done\nnow".into(),
        };
        assert_eq!(
            Github::annotation(&m(Level::Warn)).as_deref(),
            Some("::warning::50%25 done%0Anow")
        );
        assert_eq!(
            Github::annotation(&m(Level::Error)).as_deref(),
            Some("::error::50%25 done%0Anow")
        );
        assert_eq!(Github::annotation(&m(Level::Info)), None);
    }

    #[test]
    fn a_human_line_is_one_physical_line() {
        for (raw, shown) in [
            ("plain 100% :: x", "plain 100% :: x"),
            ("a\n::error::x", "a\\n::error::x"),
            ("a\r::warning::x", "a\\r::warning::x"),
            ("a\r\n\n", "a\\r\\n\\n"),
            ("", ""),
            ("x ##[error]y", "x ##\\[error]y"),
            ("###[a]##[[b]", "###\\[a]##\\[[b]"),
        ] {
            assert_eq!(one_line(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn a_line_that_would_be_a_command_once_trimmed_is_not_one() {
        for (raw, shown) in [
            ("  ::warning::x", "  \\::warning::x"),
            ("\u{3000}\t::add-mask::x", "\u{3000}\t\\::add-mask::x"),
            ("::x", "\\::x"),
            ("  step 2 failed: ::x", "  step 2 failed: ::x"),
            (": :x", ": :x"),
            ("", ""),
        ] {
            assert_eq!(not_a_command(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn an_output_with_a_line_break_takes_an_end_marker_it_does_not_hold() {
        for (value, written) in [
            ("ok", "n=ok\n"),
            ("", "n=\n"),
            ("a = b", "n=a = b\n"),
            ("a\nb", "n<<BATCHSSE_END\na\nb\nBATCHSSE_END\n"),
            ("a\rb", "n<<BATCHSSE_END\na\rb\nBATCHSSE_END\n"),
            (
                "x\nBATCHSSE_END\nn=forged",
                "n<<BATCHSSE_END_\nx\nBATCHSSE_END\nn=forged\nBATCHSSE_END_\n",
            ),
        ] {
            assert_eq!(output("n", value), written, "{value:?}");
        }
    }

    #[test]
    fn a_summary_of_many_steps_keeps_under_budget_and_keeps_the_failed_ones() {
        let ended = |index: usize, state| StepEvent {
            index,
            name: format!("step {index} {}", "é".repeat(300)),
            state,
            done: 1,
            total: 1,
            changed: 1,
            elapsed_ms: 1,
            error: None,
            cancelled: false,
        };
        let mut g = Github::default();
        g.started = true;
        for i in 0..20_000 {
            let state = if i == 19_999 {
                StepState::Failed
            } else {
                StepState::Done
            };
            g.steps.push((ended(i, state).name, Some(ended(i, state))));
        }
        let rows = g.table_rows();
        assert!(rows.len() < ROWS_BUDGET + 4096, "{}", rows.len());
        let lines: Vec<&str> = rows.lines().collect();
        assert!(lines[0].starts_with("| 1 | step 0 éé"), "{}", lines[0]);
        assert!(lines[0].contains("é… | done |"), "{}", lines[0]);
        let listed = lines.len() - 2;
        assert_eq!(
            lines[listed],
            format!(
                "| … | {} more steps not listed (GitHub shows no step summary over 1 MiB) | | | |",
                thousands(19_999 - listed as u64)
            )
        );
        assert!(
            lines[listed + 1].starts_with("| 20000 | step 19999 ")
                && lines[listed + 1].contains("| **failed** |"),
            "{}",
            lines[listed + 1]
        );
        assert_eq!(cell_of("ab|c", 2), "ab…");
        assert_eq!(cell_of("ab|c", 4), "ab\\|c");
    }

    #[test]
    fn table_cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(
            cell("UPDATE t SET x = x*2 -- `x`"),
            "UPDATE t SET x = x\\*2 -- \\`x\\`"
        );
        // An entity, a strikethrough, an image or a heading is shown as
        // written, not rendered.
        assert_eq!(
            cell("&amp; ~~x~~ ![i](u) #1"),
            "\\&amp; \\~\\~x\\~\\~ \\!\\[i\\](u) \\#1"
        );
    }
}
