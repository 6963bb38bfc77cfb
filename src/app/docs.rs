//! What the binary says about itself, for an operator's tools: shell
//! completions, the man page, and the JSON Schema of its events. Each is
//! generated from the same definitions the program runs on.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::events::schema;

/// `batchsse completions SHELL`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "batchsse", &mut out);
    print(&out)
}

/// `batchsse man`: one page, `batchsse(1)`, with a section per
/// subcommand (its synopsis, description, options and examples), so one
/// file says everything `--help` does.
pub fn man() -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut head = Vec::new();
    top.render_title(&mut head)?;
    top.render_name_section(&mut head)?;
    top.render_synopsis_section(&mut head)?;
    top.render_description_section(&mut head)?;
    top.render_options_section(&mut head)?;
    let mut out = format!("{}\n", PREAMBLE.join("\n")).into_bytes();
    copy_sections(&head, &mut out, |h| format!(".SH {h}"))?;
    for sub in cmd.get_subcommands() {
        render_subcommand(sub, "batchsse", &mut out)?;
    }
    let mut tail = Vec::new();
    top.render_extra_section(&mut tail)?;
    top.render_version_section(&mut tail)?;
    copy_sections(&tail, &mut out, |h| match h {
        "EXTRA" => ".SH \"EXIT STATUS\"".into(),
        other => format!(".SH {other}"),
    })?;
    print(ascii_roff(&String::from_utf8_lossy(&out)).as_bytes())
}

/// `sub` as a `.SH` section named by its full command line, with
/// clap_mangen's own sections as `.SS` under it; then its own
/// subcommands, the same way.
fn render_subcommand(sub: &clap::Command, parent: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
    let man = clap_mangen::Man::new(
        sub.clone()
            .bin_name(name.clone())
            .display_name(name.clone()),
    );
    let mut body = Vec::new();
    man.render_synopsis_section(&mut body)?;
    man.render_description_section(&mut body)?;
    man.render_options_section(&mut body)?;
    if sub.get_after_help().is_some() || sub.get_after_long_help().is_some() {
        man.render_extra_section(&mut body)?;
    }
    copy_sections(&body, out, |h| match h {
        "EXTRA" => ".SS EXAMPLES".into(),
        other => format!(".SS {other}"),
    })?;
    for inner in sub.get_subcommands() {
        render_subcommand(inner, &name, out)?;
    }
    Ok(())
}

/// The preamble every clap_mangen render starts with; the page needs it once.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// Copies roff lines, replacing each `.SH` heading with `heading(title)`
/// and leaving out the preamble.
fn copy_sections(
    roff: &[u8],
    out: &mut Vec<u8>,
    heading: impl Fn(&str) -> String,
) -> std::io::Result<()> {
    for line in String::from_utf8_lossy(roff).lines() {
        if PREAMBLE.contains(&line) {
            continue;
        }
        match line.strip_prefix(".SH ") {
            Some(title) => writeln!(out, "{}", heading(title))?,
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

/// Roff that troff reads without a preprocessor: every non-ASCII character
/// as its `\[uXXXX]` escape (groff and mandoc both know them).
fn ascii_roff(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out += &format!("\\[u{:04X}]", c as u32);
        }
    }
    out
}

/// `batchsse schema`.
pub fn schema() -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(&schema::events())?;
    text.push('\n');
    print(text.as_bytes())
}

/// Writes to stdout; a reader that went away early (`| head`) is not an
/// error worth a message.
pub(super) fn print(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
