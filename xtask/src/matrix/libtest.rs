//! A libtest binary's output, parsed, and judged against the tests it had to run.

use std::{collections::BTreeMap, time::Duration};

use super::{
    Binary,
    table::{Cell, Column},
};

/// One libtest binary's output, parsed.
#[derive(Debug, Default, PartialEq)]
pub struct Libtest {
    /// Test name -> its result.
    pub results: BTreeMap<String, Cell>,
    /// The test that printed `test NAME ... ` and no result yet (a run cut short).
    pub pending: Option<String>,
    /// (passed, failed, ignored) from `test result:`.
    pub summary: Option<(u32, u32, u32)>,
    /// Test name -> the panic message from the `---- NAME stdout ----` section.
    pub messages: BTreeMap<String, String>,
}

impl Libtest {
    /// Parses `test NAME ... ok|FAILED|ignored` (the result may come on a later line when a child
    /// process printed in between), `test result:` and the failures' output sections.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Libtest {
        let mut t = Libtest::default();
        let mut section: Option<String> = None;
        let mut message: Vec<String> = Vec::new();
        let result = |s: &str| {
            let s = s.trim();
            if s == "ok" {
                Some(Cell::Ok)
            } else if s == "FAILED" {
                Some(Cell::Failed)
            } else if s.starts_with("ignored") {
                Some(Cell::Ignored)
            } else {
                None
            }
        };
        for line in lines {
            if let Some(rest) = line.strip_prefix("test result: ") {
                t.summary = parse_summary(rest);
                continue;
            }
            if let Some(rest) = line.strip_prefix("test ")
                && let Some((name, tail)) = rest.split_once(" ... ")
            {
                match result(tail) {
                    Some(c) => {
                        t.results.insert(name.to_owned(), c);
                        t.pending = None;
                    }
                    None => t.pending = Some(name.to_owned()),
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("test ")
                && let Some(name) = rest.strip_suffix(" ...")
            {
                t.pending = Some(name.to_owned());
                continue;
            }
            if let Some(c) = result(line)
                && let Some(name) = t.pending.take()
            {
                t.results.insert(name, c);
                continue;
            }
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|r| r.strip_suffix(" stdout ----"))
            {
                finish_message(&mut t, section.take(), &mut message);
                section = Some(name.to_owned());
                continue;
            }
            if section.is_some() {
                if line.trim() == "failures:" {
                    finish_message(&mut t, section.take(), &mut message);
                } else {
                    message.push(line.to_owned());
                }
            }
        }
        finish_message(&mut t, section, &mut message);
        t
    }
}

/// `ok. 8 passed; 0 failed; 0 ignored; ...` -> (8, 0, 0).
fn parse_summary(s: &str) -> Option<(u32, u32, u32)> {
    let count = |what: &str| {
        s.split(';').find_map(|part| {
            let part = part.trim();
            let part = part.rsplit(". ").next().unwrap_or(part);
            part.strip_suffix(what)?.trim().parse().ok()
        })
    };
    Some((count("passed")?, count("failed")?, count("ignored")?))
}

/// Keeps from a failed test's captured output the panic line's message (what the assertion said).
fn finish_message(t: &mut Libtest, name: Option<String>, lines: &mut Vec<String>) {
    let Some(name) = name else {
        lines.clear();
        return;
    };
    let mut msg = Vec::new();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        msg.push(lines[at].trim().to_owned());
        for l in &lines[at + 1..] {
            if l.trim().is_empty() || l.starts_with("note:") || l.starts_with("stack backtrace") {
                break;
            }
            msg.push(l.trim().to_owned());
            if msg.len() >= 6 {
                break;
            }
        }
    }
    t.messages.insert(name, msg.join(" / "));
    lines.clear();
}

/// Folds one binary's parsed output into `col`, checking that every expected test reported.
pub fn judge(col: &mut Column, bin: &Binary, t: &Libtest, exit: Option<i32>, bound: Duration) {
    for name in &bin.expected {
        let key = format!("{}/{name}", bin.name);
        let cell = t.results.get(name).copied().unwrap_or(Cell::Missing);
        if cell == Cell::Failed {
            let msg = t.messages.get(name).cloned().unwrap_or_default();
            col.failures.push((key.clone(), msg));
        }
        if cell == Cell::Missing && t.pending.as_deref() == Some(name.as_str()) {
            col.cells.insert(key.clone(), Cell::Failed);
            col.failures
                .push((key, "was running when the run ended".to_owned()));
            continue;
        }
        col.cells.insert(key, cell);
    }
    let reported = bin
        .expected
        .iter()
        .filter(|n| t.results.contains_key(*n))
        .count();
    match exit {
        None => col.problems.push(format!("{}: never started", bin.name)),
        Some(-1) => col
            .problems
            .push(format!("{}: ended without an exit status", bin.name)),
        Some(124 | 137) => col.problems.push(format!(
            "{}: timed out after {}s",
            bin.name,
            bound.as_secs()
        )),
        Some(code) => {
            let failed = t.results.values().filter(|c| **c == Cell::Failed).count();
            if code != 0 && failed == 0 {
                col.problems.push(format!(
                    "{}: exit status {code} with no failed test",
                    bin.name
                ));
            }
        }
    }
    if reported < bin.expected.len() {
        col.problems.push(format!(
            "{}: {reported} of {} tests reported",
            bin.name,
            bin.expected.len()
        ));
    }
    match t.summary {
        None if exit.is_some() => col
            .problems
            .push(format!("{}: no `test result:` line", bin.name)),
        Some((p, f, i)) if (p + f + i) as usize != t.results.len() => col.problems.push(format!(
            "{}: `test result:` counts {} tests, {} parsed",
            bin.name,
            p + f + i,
            t.results.len()
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::matrix::plan::Suites;

    #[test]
    fn libtest_lines_and_late_results() {
        let out = "\nrunning 3 tests\ntest a ... ok\ntest b ... \nCannot find device\nFAILED\ntest c ... ignored, needs x\n\nfailures:\n\n---- b stdout ----\n\nthread 'b' panicked at tests/trace.rs:10:5:\nassertion `left == right` failed: the tier\n  left: Kprobe\n right: Fentry\nnote: run with `RUST_BACKTRACE=1`\n\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        let t = Libtest::parse(out.lines());
        assert_eq!(t.results["a"], Cell::Ok);
        assert_eq!(t.results["b"], Cell::Failed);
        assert_eq!(t.results["c"], Cell::Ignored);
        assert_eq!(t.summary, Some((1, 1, 1)));
        assert_eq!(
            t.messages["b"],
            "thread 'b' panicked at tests/trace.rs:10:5: / assertion `left == right` failed: the tier / left: Kprobe / right: Fentry"
        );
    }

    #[test]
    fn a_cut_run_is_not_a_pass() {
        let t = Libtest::parse("running 2 tests\ntest a ... ok\ntest b ... ".lines());
        let bin = Binary {
            name: "trace",
            level: Suites::Core,
            path: PathBuf::new(),
            expected: vec!["a".into(), "b".into()],
        };
        let mut col = Column::default();
        judge(&mut col, &bin, &t, Some(124), Duration::from_secs(5));
        assert!(!col.passed());
        assert_eq!(col.cells["trace/b"], Cell::Failed);
        assert_eq!(col.status(), "TIMEOUT");
        // Zero tests run is never a pass either.
        let mut col = Column::default();
        judge(
            &mut col,
            &bin,
            &Libtest::parse("".lines()),
            Some(0),
            Duration::ZERO,
        );
        assert!(!col.passed());
    }
}
