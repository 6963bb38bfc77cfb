//! The terminal: one more reader of the event log. Bars on a TTY, plain
//! lines elsewhere, NDJSON on stdout for scripts, or nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use crate::cli::ProgressMode;
use crate::error::{print_line, terminal_safe};
use crate::events::log::EventLog;
use crate::events::{Event, Level, Progress, RunKind, RunStatus, StepState, ThrottleReason};
use crate::human::{duration, plural, quoted, rows, shown, thousands};
use crate::view::github::Github;

impl ProgressMode {
    /// Settles `auto` for the current stderr and environment.
    pub fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto => {
                let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
                let tty = std::io::stderr().is_terminal();
                if tty && !dumb {
                    ProgressMode::Bar
                } else if crate::view::github::in_actions() {
                    ProgressMode::Github
                } else {
                    ProgressMode::Plain
                }
            }
            other => other,
        }
    }
}

fn colors() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Draws events as they come, whichever way they arrived.
pub struct Renderer {
    mode: ProgressMode,
    steps: Vec<String>,
    last_plain: HashMap<usize, Instant>,
    /// At most one plain progress line per step this often.
    interval: Duration,
    bars: Option<Bars>,
    /// What `--progress github` remembers for its summary.
    github: Github,
    /// Set once a write to standard output failed (its reader is gone,
    /// or the disk is full), or the reader of the stream the mode writes
    /// to is gone: no more lines are tried.
    output_failed: bool,
    /// The error of the step that failed, once its line has shown it: the
    /// same words in an error message or the final line are not repeated.
    failure: Option<String>,
    /// What a skipped step's line says: why this kind of run skips one.
    skipped: &'static str,
    /// What the run is, from its `start` (an undo's pace has no chunk time).
    kind: RunKind,
    /// Every line one physical line (see `github::one_line`): github mode,
    /// or any mode writing to a GitHub Actions log.
    one_line: bool,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    step: Option<ProgressBar>,
    /// Typed keys unechoed while the bars are drawn (dropped after them).
    _keys: Option<crate::platform::Unechoed>,
}

impl Bars {
    /// The run's bar, with its elapsed clock moving between events.
    fn new(s: &crate::events::Start) -> Bars {
        let multi = MultiProgress::with_draw_target(super::edge::stderr());
        let overall = multi.add(ProgressBar::new(s.steps.len() as u64));
        overall.set_style(style(&template(BarKind::Run, width())));
        overall.set_prefix("run ");
        overall.set_message(on_a_bar(&format!("{} on {}", shown(&s.plan), shown(&s.db))));
        overall.enable_steady_tick(Duration::from_millis(250));
        let mut keys = None;
        if !multi.is_hidden() {
            crate::error::set_bars(Some(Arc::new(Above(multi.clone()))));
            keys = crate::platform::Unechoed::begin();
        }
        Bars {
            multi,
            overall,
            step: None,
            _keys: keys,
        }
    }

    /// A step bar while a step runs; once it ends, the line to print above
    /// the bars.
    fn step(
        &mut self,
        s: &crate::events::StepEvent,
        label: String,
        skipped: &str,
    ) -> Option<String> {
        // A bar shows its message as it is: see [`terminal_safe`].
        let label = on_a_bar(&label);
        if s.state == StepState::Running {
            let pb = self.multi.add(ProgressBar::new(s.total.max(1)));
            pb.set_style(style(&template(BarKind::Step, width())));
            pb.set_prefix("step");
            if let Some(old) = self.step.replace(pb) {
                old.finish_and_clear();
            }
            self.overall.set_message(label);
            return None;
        }
        // Each bar is drawn once at its true count as the step ends: the
        // draws in between are rate limited (20 a second), and the run's
        // bar, with its clock ticking, is drawn only at its ticks (4 a
        // second), so steps that end fast (all skipped on a plan run
        // again, a short walk) left it drawn at "0/5 steps" under five
        // "skipped" lines, the step's bar short of its last rows.
        if let Some(pb) = self.step.take() {
            pb.force_draw();
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        self.overall.inc(1);
        self.overall.force_draw();
        Some(format!("{label}: {}", step_line(s, skipped)))
    }

    /// A line above the bars; where they cannot be drawn (`--progress bar`
    /// with stderr not a terminal: a CI log), a plain line, since indicatif
    /// drops what it would print above hidden bars.
    fn line(&self, line: &str) {
        if self.multi.is_hidden() {
            print_line(line);
        } else {
            let _ = self.multi.println(on_a_bar(line));
        }
    }
}

/// The bars as [`crate::error::print_line`] sees them. Not indicatif's
/// `suspend`, which panics when the terminal refuses a write (it was
/// closed).
struct Above(MultiProgress);

impl crate::error::Bars for Above {
    fn println(&self, line: &str) {
        let _ = self.0.println(on_a_bar(line));
    }

    fn clear_for_good(&self) {
        let _ = self.0.clear();
        self.0.set_draw_target(ProgressDrawTarget::hidden());
    }
}

/// Bars that go (the run finished, another run follows, or `watch` was
/// stopped) leave nothing behind on the terminal, and lines printed from
/// elsewhere go straight to stderr again.
impl Drop for Bars {
    fn drop(&mut self) {
        crate::error::set_bars(None);
        if let Some(pb) = self.step.take() {
            pb.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Renderer {
    fn note_failure(&mut self, s: &crate::events::StepEvent) {
        if s.state == StepState::Failed {
            self.failure.clone_from(&s.error);
        }
    }

    /// An error message that repeats the failed step's line.
    fn already_said(&self, m: &crate::events::Message) -> bool {
        m.status == Level::Error && self.failure.as_deref() == Some(m.message.as_str())
    }

    /// `interval`: at most one plain progress line per step this often.
    pub fn new(mode: ProgressMode, interval: Duration) -> Renderer {
        let mode = mode.resolve();
        Renderer {
            one_line: mode == ProgressMode::Github || crate::view::github::in_actions(),
            mode,
            steps: Vec::new(),
            last_plain: HashMap::new(),
            interval,
            bars: None,
            github: Github::default(),
            output_failed: false,
            failure: None,
            skipped: SKIPPED_RUN,
            kind: RunKind::Run,
        }
    }

    /// What is being followed, known before its `start` event: a command
    /// can come first (an undo's server takes `POST /control` while the
    /// undo still reads its record), and its line must name an undo's
    /// pace as the run's chunks, not a chunk time.
    pub fn of_kind(mut self, kind: RunKind) -> Renderer {
        self.set_kind(kind);
        self
    }

    fn set_kind(&mut self, kind: RunKind) {
        self.kind = kind;
        self.skipped = match kind {
            RunKind::Undo => SKIPPED_UNDO,
            _ => SKIPPED_RUN,
        };
    }

    /// Prints one line of human text, above the bars if there are any; in
    /// github mode or an Actions log as one physical line (see
    /// `github::one_line`).
    fn say(&self, line: &str) {
        let line = if self.one_line {
            crate::view::github::one_line(line).into()
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        match &self.bars {
            Some(b) => b.line(&line),
            None => print_line(&line),
        }
    }

    /// The run's final line: its outcome, then its error (if any) as a
    /// line of its own, each one physical line where that is asked for.
    fn say_outcome(&self, line: &str) {
        let (outcome, error) = line.split_once('\n').unwrap_or((line, ""));
        self.say(&format!("batchsse: {outcome}"));
        if !error.is_empty() {
            // An Actions log reads a command after the indent.
            let error = if self.one_line {
                crate::view::github::not_a_command(error)
            } else {
                error.into()
            };
            self.say(&error);
        }
    }

    /// "[2/5] name": the name the event carries (on one line, see
    /// [`shown`]), the count from `start`;
    /// a watch that began after `start` (`?last_event_id=N`) does not know
    /// the count: "[2/?] name".
    fn label(&self, index: usize, name: &str) -> String {
        let of = match self.steps.len() {
            0 => "?".to_owned(),
            n => n.max(index + 1).to_string(),
        };
        format!("[{}/{of}] {}", index + 1, shown(name))
    }

    /// Shows one event; `data` is its JSON payload as sent over SSE.
    pub fn show(&mut self, id: u64, event: &Event, data: &str) {
        if let Event::Start(s) = event {
            self.set_kind(s.kind);
        }
        match self.mode {
            ProgressMode::None => self.say_if_failed(event),
            // The JSON is on stdout, often into a file: a failure is said
            // on stderr too, or a log would show nothing of it.
            ProgressMode::Json => {
                self.json(id, event.name(), data);
                self.say_if_failed(event);
            }
            ProgressMode::Plain | ProgressMode::Auto => self.plain(event),
            ProgressMode::Github => self.github(event),
            ProgressMode::Bar => self.bar(event),
        }
    }

    /// The outcome of a run that did not end ok, for the modes that show
    /// nothing else on stderr.
    fn say_if_failed(&mut self, event: &Event) {
        if let Event::Finished(f) = event
            && f.status != RunStatus::Ok
        {
            self.say_outcome(&finished_line_after(f, self.failure.as_deref()));
        }
    }

    /// Forgets the run shown so far (its bars go) and says why with `line`:
    /// what follows is another run, from its `start`.
    pub fn new_run(&mut self, line: &str) {
        self.bars = None;
        self.steps.clear();
        self.last_plain.clear();
        if self.mode != ProgressMode::None {
            self.say(line);
        }
    }

    /// A line of `watch`'s own (not the run's), unless output is off.
    pub fn note(&self, line: &str) {
        if self.mode != ProgressMode::None {
            self.say(line);
        }
    }

    /// True once a write to the mode's stream failed (a full disk, a
    /// closed pipe), or its reader was found gone (see
    /// [`Renderer::output_gone`]).
    pub fn output_failed(&self) -> bool {
        let stderr = self.output() == Some(crate::platform::Output::Stderr);
        self.output_failed || (stderr && crate::error::stderr_failed())
    }

    /// True once the stream this mode writes to has no reader left,
    /// whether or not a write found it yet: a paused run may send nothing
    /// but keep-alives for a long time.
    pub fn output_gone(&mut self) -> bool {
        if self.output().is_some_and(crate::platform::reader_gone) {
            self.output_failed = true;
        }
        self.output_failed()
    }

    /// The stream this mode writes to: standard output for `--progress
    /// json`, standard error for the others.
    fn output(&self) -> Option<crate::platform::Output> {
        use crate::platform::Output;
        match self.mode {
            ProgressMode::None => None,
            ProgressMode::Json => Some(Output::Stdout),
            _ => Some(Output::Stderr),
        }
    }

    fn json(&mut self, id: u64, name: &str, data: &str) {
        if self.output_failed {
            return;
        }
        // A stream may split its JSON over several `data:` lines (valid
        // SSE); in valid JSON a line break is only ever blank space, so a
        // space keeps it one line of the same JSON.
        let data = if data.contains(['\r', '\n']) {
            std::borrow::Cow::Owned(data.replace(['\r', '\n'], " "))
        } else {
            std::borrow::Cow::Borrowed(data)
        };
        let mut out = std::io::stdout().lock();
        let ok = writeln!(out, "{{\"id\":{id},\"event\":\"{name}\",\"data\":{data}}}")
            .and_then(|()| out.flush());
        // A closed pipe (`| head`) is not an error worth a word; anything
        // else (a full disk) is.
        if let Err(e) = ok {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                print_line(&format!(
                    "batchsse: cannot write to standard output ({e}); no more JSON lines will be printed"
                ));
            }
            self.output_failed = true;
        }
    }

    /// Plain lines, with GitHub's workflow commands around them.
    fn github(&mut self, event: &Event) {
        let lines = match event {
            Event::Start(s) => {
                self.github.start(s);
                return self.plain(event);
            }
            Event::Step(s) => {
                self.last_plain.remove(&s.index);
                self.note_failure(s);
                let label = self.label(s.index, &s.name);
                let line = format!("{label}: {}", step_line(s, self.skipped));
                self.github.step(s, &label, line)
            }
            // A failed step's error has its annotation already.
            Event::Message(m) if self.already_said(m) => return,
            Event::Message(m) => match Github::annotation(m) {
                Some(line) => vec![line],
                None => return self.plain(event),
            },
            Event::Finished(f) => self.github.finished(f, &finished_line(f)),
            _ => return self.plain(event),
        };
        for line in lines {
            self.say(&line);
        }
    }

    fn plain(&mut self, event: &Event) {
        match event {
            Event::Start(s) => {
                self.steps = s.steps.iter().map(|s| s.name.clone()).collect();
                self.say(&start_line(s));
            }
            Event::Step(s) => {
                self.last_plain.remove(&s.index);
                self.note_failure(s);
                self.say(&format!(
                    "{}: {}",
                    self.label(s.index, &s.name),
                    step_line(s, self.skipped)
                ));
            }
            Event::Progress(p) => {
                let now = Instant::now();
                let due = self
                    .last_plain
                    .get(&p.step)
                    .is_none_or(|t| now.duration_since(*t) >= self.interval);
                let last = p.done.is_some() && p.done >= p.total;
                if due || last {
                    self.last_plain.insert(p.step, now);
                    self.say(&format!(
                        "{}: {}",
                        self.label(p.step, &p.name),
                        progress_line(p)
                    ));
                }
            }
            Event::Message(m) if self.already_said(m) => {}
            Event::Message(m) => self.say(&message_line(m)),
            Event::Throttle(t) => self.say(&throttle_line(t)),
            Event::Control(c) => self.say(&control_line(c, self.kind)),
            Event::Finished(f) => {
                self.say_outcome(&finished_line_after(f, self.failure.as_deref()));
            }
        }
    }

    fn bar(&mut self, event: &Event) {
        match event {
            Event::Start(s) => {
                self.steps = s.steps.iter().map(|s| s.name.clone()).collect();
                // The old bars go first: dropped after the new ones were
                // made, they would unregister those (see `Drop for Bars`).
                self.bars = None;
                self.bars = Some(Bars::new(s));
                self.say(&start_line(s));
            }
            Event::Step(s) => {
                let label = self.label(s.index, &s.name);
                self.note_failure(s);
                let skipped = self.skipped;
                if let Some(line) = self.bars.as_mut().and_then(|b| b.step(s, label, skipped)) {
                    self.say(&line);
                }
            }
            Event::Progress(p) => {
                // The run's bar names the step.
                if let Some(pb) = self.bars.as_ref().and_then(|b| b.step.as_ref()) {
                    if let (Some(done), Some(total)) = (p.done, p.total) {
                        pb.set_length(total.max(1));
                        pb.set_position(done);
                    }
                    pb.set_message(bar_message(p));
                }
            }
            Event::Throttle(t) => {
                // On the run's bar while it lasts, and a line for the record.
                if let Some(b) = self.bars.as_ref() {
                    // Paused, its ETA and rate no longer hold; resumed,
                    // nor does the word: the next chunk's progress gives
                    // them again.
                    if let Some(step) = b.step.as_ref().filter(|_| t.reason.pauses()) {
                        step.set_message(if t.active { "paused" } else { "" });
                    }
                    b.overall.set_prefix(if !t.active {
                        "run "
                    } else if t.reason.pauses() {
                        "paused"
                    } else {
                        "throttled"
                    });
                }
                self.say(&throttle_line(t));
            }
            Event::Control(c) => self.say(&control_line(c, self.kind)),
            Event::Message(m) => {
                // A step's info messages would crowd the bars; the run's own
                // (what it found, what to do next: the undo command, how to
                // go on) are few, and warnings and errors always stay.
                let step_info = m.status == Level::Info && m.target.get("step").is_some();
                if !step_info && !self.already_said(m) {
                    self.say(&message_line(m));
                }
            }
            Event::Finished(f) => {
                self.bars = None;
                self.say_outcome(&finished_line(f));
            }
        }
    }
}

/// Text for a bar, or a line above the bars: safe for the terminal (see
/// [`terminal_safe`]), and with no zero-width joiner. indicatif measures a
/// joined emoji (👨‍👩‍👧) by its parts, six columns, and pads each line to
/// the terminal's edge by that measure; a terminal that draws it joined,
/// two columns wide (kitty, WezTerm, iTerm2, Windows Terminal), ends the
/// line short of the edge, and the next one is drawn on the same row.
/// Unjoined, every terminal draws the parts, as wide as measured.
fn on_a_bar(text: &str) -> String {
    terminal_safe(text).replace('\u{200d}', "")
}

#[derive(Clone, Copy)]
enum BarKind {
    /// Steps done, the time so far, and the step under way.
    Run,
    /// Rows of the step under way, its ETA and rate.
    Step,
}

/// The terminal's width in columns, if stderr is one.
fn width() -> Option<usize> {
    console::Term::stderr()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

/// A bar's template for a terminal `cols` wide: one line, never wrapped
/// (a wrapped bar takes two lines at each redraw). The message is cut to
/// what is left (`wide_msg`), as the terminal's width is at each redraw;
/// the bar itself is narrower on a narrower terminal, and gone below 60
/// columns, where the counts alone take a third of the line.
fn template(kind: BarKind, cols: Option<usize>) -> String {
    let cols = cols.unwrap_or(80);
    let color = colors();
    let prefix = if color { "{prefix:.bold}" } else { "{prefix}" };
    let (counts, bar_colors) = match kind {
        BarKind::Run => ("{pos}/{len} steps  {elapsed_precise}", ".green/white"),
        BarKind::Step => ("{human_pos}/{human_len} rows", ".cyan/blue"),
    };
    if cols < 60 {
        let percent = match kind {
            BarKind::Run => "",
            BarKind::Step => "{percent:>3}% ",
        };
        return format!("{prefix} {percent}{counts}  {{wide_msg}}");
    }
    let bar = (cols / 4).clamp(10, 30);
    let bar_colors = if color { bar_colors } else { "" };
    format!("{prefix} [{{bar:{bar}{bar_colors}}}] {counts}  {{wide_msg}}")
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn start_line(s: &crate::events::Start) -> String {
    let what = match (&s.kind, &s.undo) {
        (RunKind::Undo, Some(u)) => format!(
            "undo of run{} {} of plan",
            plural(u.reverts.len()),
            u.reverts.join(", ")
        ),
        _ => "plan".to_owned(),
    };
    format!(
        "batchsse: {what} {} on {}: {} step{}{}{}",
        quoted(&s.plan),
        shown(&s.db),
        s.steps.len(),
        plural(s.steps.len()),
        if s.resumed {
            ", an earlier run's checkpoint found"
        } else {
            ""
        },
        if s.dry_run {
            " (dry run: nothing will be written)"
        } else {
            ""
        }
    )
}

/// A plain line's account of a `progress`: counts after a chunk, the time
/// so far for a heartbeat.
fn progress_line(p: &Progress) -> String {
    let (Some(done), Some(total)) = (p.done, p.total) else {
        return format!("running for {}", duration(p.elapsed_ms));
    };
    format!(
        "{}/{} rows ({:.1}%), {} changed, {} rows/s{}",
        thousands(done),
        thousands(total),
        p.percent.unwrap_or_default(),
        thousands(p.changed),
        thousands(p.rate.unwrap_or_default() as u64),
        // A step's last chunk needs no ETA ("ETA 0 ms").
        p.eta_ms
            .filter(|_| done < total)
            .map(|e| format!(", ETA {}", duration(e)))
            .unwrap_or_default()
    )
}

/// The step bar's message: ETA (first: on a narrow terminal the end of
/// the line is cut) and rate, or the time so far.
fn bar_message(p: &Progress) -> String {
    match p.rate {
        None => format!("running for {}", duration(p.elapsed_ms)),
        Some(rate) => format!(
            "{}{} rows/s",
            p.eta_ms
                .map(|e| format!("ETA {}  ", duration(e)))
                .unwrap_or_default(),
            thousands(rate as u64),
        ),
    }
}

const SKIPPED_RUN: &str = "skipped (already applied)";
/// An undo skips only the step its run did not record, and stops there.
const SKIPPED_UNDO: &str = "skipped (not recorded by the run; the undo stops here)";

fn step_line(s: &crate::events::StepEvent, skipped: &str) -> String {
    match s.state {
        StepState::Running => "running".into(),
        StepState::Done => format!(
            "done, {} changed in {}",
            rows(s.changed),
            duration(s.elapsed_ms)
        ),
        StepState::Skipped => skipped.into(),
        StepState::Failed => format!(
            "{} after {}: {}",
            if s.cancelled { "cancelled" } else { "FAILED" },
            duration(s.elapsed_ms),
            s.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

/// "batchsse: throttled (pause-file): …" / "batchsse: no longer throttled
/// (pause-file): waited 3.2 s" (not "going on": a wait may end in a cancel).
fn throttle_line(t: &crate::events::Throttle) -> String {
    let reason = serde_json::to_value(t.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let what = match (t.active, t.reason) {
        (true, ThrottleReason::Paused) => "paused".to_owned(),
        (true, _) => format!("throttled ({reason})"),
        (false, ThrottleReason::Paused) => "no longer paused".to_owned(),
        (false, _) => format!("no longer throttled ({reason})"),
    };
    format!("batchsse: {what}: {}", t.detail)
}

/// "batchsse: pause from the dashboard (127.0.0.1:50412)".
fn control_line(c: &crate::events::Control, kind: RunKind) -> String {
    use crate::events::{ControlAction, ControlBy};
    let what = match c.action {
        ControlAction::Pause => "pause (at the next chunk boundary)".to_owned(),
        ControlAction::Resume => "resume".to_owned(),
        ControlAction::Cancel => "cancel".to_owned(),
        ControlAction::Set => {
            let s = &c.settings;
            match kind {
                RunKind::Undo => format!(
                    "new pace: {}, nice ratio {}, sleep {} ms",
                    crate::events::RECORDED_CHUNKS,
                    s.nice_ratio,
                    s.sleep_ms
                ),
                RunKind::Run => format!(
                    "new pace: chunks of ~{} ms, nice ratio {}, sleep {} ms, batch size {}",
                    s.chunk_time_ms,
                    s.nice_ratio,
                    s.sleep_ms,
                    // As every other line says a batch size (`ctl`, the pace
                    // messages): 2,500.
                    s.batch_size
                        .map_or("adaptive".into(), crate::human::thousands)
                ),
            }
        }
    };
    let by = match c.by {
        ControlBy::Http => "over HTTP",
        ControlBy::Ctl => "from batchsse ctl",
        ControlBy::Dashboard => "from the dashboard",
    };
    format!("batchsse: {what} {by} ({})", c.remote)
}

fn message_line(m: &crate::events::Message) -> String {
    let level = match m.status {
        Level::Info => "",
        Level::Warn => "warning: ",
        Level::Error => "error: ",
    };
    format!("batchsse: {level}{}", m.message)
}

pub fn finished_line(f: &crate::events::Finished) -> String {
    finished_line_after(f, None)
}

/// The final line, without its error when `said` already showed it.
fn finished_line_after(f: &crate::events::Finished, said: Option<&str>) -> String {
    let status = match f.status {
        RunStatus::Ok => "finished ok",
        RunStatus::Failed => "FAILED",
        RunStatus::Cancelled => "cancelled",
    };
    let mut line = format!(
        "{status}: {}/{} steps, {} {} in {}",
        f.steps_done,
        f.steps_total,
        rows(f.rows_changed),
        if f.dry_run {
            "would change (dry run, nothing written)"
        } else {
            "changed"
        },
        duration(f.elapsed_ms)
    );
    match f.undo_bytes {
        // Recorded, with nothing to keep: every step skipped (already
        // applied), unchanged or unrecorded.
        Some(0) => line += ", nothing recorded for undo",
        Some(b) => line += &format!(", undo record {} bytes", thousands(b)),
        None => {}
    }
    line += &kept_said(f);
    if let Some(n) = f.carried_older {
        let (rows, carry) = match (n, f.dry_run) {
            (1, false) => ("row", "still carries"),
            (_, false) => ("rows", "still carry"),
            (1, true) => ("row", "would still carry"),
            (_, true) => ("rows", "would still carry"),
        };
        line += &format!(
            "; {} {rows} {carry} an older run's change (see the warnings above)",
            thousands(n)
        );
    }
    if let Some(e) = f.error.as_deref().filter(|e| Some(*e) != said) {
        line += &format!("\n  {e}");
    }
    line
}

/// What an undo's `finished` says of the rows it kept: this try's (a dry
/// run rolled its conflict rows back with everything else), and those an
/// earlier try kept, which a try that went on from it must not leave out.
fn kept_said(f: &crate::events::Finished) -> String {
    let (n, earlier) = (f.conflicts.unwrap_or(0), f.conflicts_earlier.unwrap_or(0));
    let count = |n: u64| format!("{} conflict{}", thousands(n), plural(n));
    let theirs = |n: u64| format!("the application's row{}", plural(n));
    let listed = " (every one is in the table batchsse_undo_conflict)";
    let before = "before this try";
    if let Some(left) = f.conflicts_as_left.filter(|&l| l > 0) {
        return kept_as_left(f.dry_run, (n, earlier), left);
    }
    match (n, earlier, f.dry_run) {
        (0, 0, _) => String::new(),
        (0, e, _) => format!("; {} kept {} {before}{listed}", count(e), theirs(e)),
        (n, 0, true) => format!("; {} would keep {}", count(n), theirs(n)),
        (n, e, true) => format!(
            "; {} would keep {}, and {} {before} kept {}{listed}",
            count(n),
            theirs(n),
            count(e),
            theirs(e)
        ),
        (n, 0, false) => format!("; {} kept {}{listed}", count(n), theirs(n)),
        (n, e, false) => format!(
            "; {} kept {}, and {} more {before}{listed}",
            count(n),
            theirs(n),
            thousands(e)
        ),
    }
}

/// [`kept_said`] when some rows were kept as the run left them
/// (`left`), since another row holds a value they would get back: not
/// the application's rows. `dry`: this try's `n` would be kept, not
/// written (those an earlier try kept were).
fn kept_as_left(dry: bool, (n, earlier): (u64, u64), left: u64) -> String {
    let all = n + earlier;
    let (verb, listed) = match (dry && n > 0, earlier) {
        (false, _) => (
            "kept",
            " (every one is in the table batchsse_undo_conflict)",
        ),
        (true, 0) => ("would keep", ""),
        (true, _) => (
            "kept or would keep",
            " (those kept are in the table batchsse_undo_conflict)",
        ),
    };
    let (it, they) = match left {
        1 => ("it", "it"),
        _ => ("them", "they"),
    };
    let before = match earlier {
        0 => String::new(),
        e => format!(", {} of them before this try", thousands(e)),
    };
    let theirs = all.saturating_sub(left);
    let whose = match (theirs, left) {
        (0, 1) => "its row".to_owned(),
        (0, _) => "their rows".to_owned(),
        (1, l) => format!(
            "the application's row and {} row{}",
            thousands(l),
            plural(l)
        ),
        (t, l) => format!(
            "{} of the application's rows and {} row{}",
            thousands(t),
            thousands(l),
            plural(l)
        ),
    };
    format!(
        "; {} conflict{} {verb} {whose} as the run left {it} (another row holds a value {they} would get back){before}{listed}",
        thousands(all),
        plural(all),
    )
}

/// Follows the log from the first event to `finished`.
pub async fn follow(log: Arc<EventLog>, mut renderer: Renderer) {
    let mut rx = log.subscribe();
    let mut cursor = 0;
    loop {
        rx.borrow_and_update();
        for e in log.after(cursor) {
            cursor = e.id;
            renderer.show(e.id, &e.event, e.data());
        }
        if log.finished_id().is_some_and(|f| cursor >= f) || rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An undo's `finished` with its counts of rows kept.
    fn kept(dry_run: bool, n: u64, earlier: u64, left: u64) -> String {
        let Event::Finished(mut f) = crate::events::Finished::ok() else {
            unreachable!()
        };
        f.dry_run = dry_run;
        f.conflicts = Some(n);
        f.conflicts_earlier = Some(earlier).filter(|&e| e > 0);
        f.conflicts_as_left = Some(left).filter(|&l| l > 0);
        kept_said(&f)
    }

    /// Rows kept as the run left them are not called the application's.
    #[test]
    fn an_undo_names_the_rows_it_kept_as_the_run_left_them() {
        let listed = " (every one is in the table batchsse_undo_conflict)";
        assert_eq!(
            kept(false, 2, 0, 0),
            format!("; 2 conflicts kept the application's rows{listed}")
        );
        assert_eq!(
            kept(false, 1, 0, 1),
            format!(
                "; 1 conflict kept its row as the run left it (another row holds a value it would get back){listed}"
            )
        );
        assert_eq!(
            kept(false, 3, 2, 2),
            format!(
                "; 5 conflicts kept 3 of the application's rows and 2 rows as the run left them (another row holds a value they would get back), 2 of them before this try{listed}"
            )
        );
        assert_eq!(
            kept(false, 1, 1, 1),
            format!(
                "; 2 conflicts kept the application's row and 1 row as the run left it (another row holds a value it would get back), 1 of them before this try{listed}"
            )
        );
        assert_eq!(
            kept(true, 2, 0, 2),
            "; 2 conflicts would keep their rows as the run left them (another row holds a value they would get back)"
        );
        // A dry run after a try that kept some: only those are kept.
        assert_eq!(
            kept(true, 1, 1, 2),
            "; 2 conflicts kept or would keep their rows as the run left them (another row holds a value they would get back), 1 of them before this try (those kept are in the table batchsse_undo_conflict)"
        );
        assert_eq!(
            kept(true, 0, 1, 1),
            format!(
                "; 1 conflict kept its row as the run left it (another row holds a value it would get back), 1 of them before this try{listed}"
            )
        );
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(125_000), "2m05s");
    }

    #[test]
    fn a_heartbeat_reads_as_time_running_and_a_chunk_as_counts() {
        let beat = Progress::heartbeat(0, "vacuum".into(), 35_000);
        assert_eq!(progress_line(&beat), "running for 35.0 s");
        assert_eq!(bar_message(&beat), "running for 35.0 s");
        let chunk = Progress {
            done: Some(2000),
            total: Some(10_000),
            changed: 1999,
            percent: Some(20.0),
            rate: Some(1500.0),
            eta_ms: Some(5300),
            ..beat
        };
        assert_eq!(
            progress_line(&chunk),
            "2,000/10,000 rows (20.0%), 1,999 changed, 1,500 rows/s, ETA 5.3 s"
        );
        assert_eq!(bar_message(&chunk), "ETA 5.3 s  1,500 rows/s");
        let last = Progress {
            done: Some(10_000),
            percent: Some(100.0),
            eta_ms: Some(0),
            ..chunk
        };
        assert_eq!(
            progress_line(&last),
            "10,000/10,000 rows (100.0%), 1,999 changed, 1,500 rows/s"
        );
    }
}
