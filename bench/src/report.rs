//! Figures of a run, printed as they come and written as a Markdown table.
use std::fmt::Write as _;

/// One measured figure, with the target it answers to.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// The figure.
    pub value: String,
    /// The target, in words (empty if none).
    pub target: String,
    /// Whether the target was met; `None` without a target.
    pub met: Option<bool>,
}

/// One scenario's results.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Scenario name.
    pub title: String,
    /// How to run just this scenario.
    pub command: String,
    /// What ran (sizes, flags).
    pub setup: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// What failed, if the scenario could not finish.
    pub error: Option<String>,
}

impl Section {
    /// A new, empty section.
    pub fn new(title: &str, command: &str, setup: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            command: command.into(),
            setup: setup.into(),
            ..Self::default()
        }
    }

    /// Adds a figure without a target.
    pub fn info(&mut self, metric: &str, value: impl Into<String>) {
        self.push(metric, value.into(), String::new(), None);
    }

    /// Adds a figure and whether it met `target`.
    pub fn check(&mut self, metric: &str, value: impl Into<String>, target: &str, met: bool) {
        self.push(metric, value.into(), target.into(), Some(met));
    }

    /// A latency figure whose target is its p99 below `limit_ms`.
    pub fn check_p99(&mut self, metric: &str, lat: &crate::stats::Latencies, limit_ms: u64) {
        let met = lat.pct(99.0) < std::time::Duration::from_millis(limit_ms);
        self.check(metric, lat.summary(), &format!("p99 < {limit_ms} ms"), met);
    }

    fn push(&mut self, metric: &str, value: String, target: String, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "  [met]",
            Some(false) => "  [MISSED]",
            None => "",
        };
        let target_text = if target.is_empty() {
            String::new()
        } else {
            format!("  (target {target})")
        };
        println!("  {metric}: {value}{target_text}{verdict}");
        self.rows.push(Row {
            metric: metric.into(),
            value,
            target,
            met,
        });
    }

    /// Targets missed.
    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.met == Some(false)).count()
    }

    /// The section as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n", self.title);
        let _ = writeln!(s, "`{}`\n", self.command);
        if !self.setup.is_empty() {
            let _ = writeln!(s, "{}\n", self.setup);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "**Did not finish:** {e}\n");
        }
        if !self.rows.is_empty() {
            s.push_str("| Figure | Value | Target | |\n|---|---|---|---|\n");
            for r in &self.rows {
                let verdict = match r.met {
                    Some(true) => "met",
                    Some(false) => "**MISSED**",
                    None => "",
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    r.metric, r.value, r.target, verdict
                );
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_marks_missed_targets() {
        let mut s = Section::new("t", "minkube-bench t", "setup");
        s.check("a", "1", "< 2", true);
        s.check("b", "3", "< 2", false);
        s.info("c", "x");
        let md = s.markdown();
        assert!(md.contains("| b | 3 | < 2 | **MISSED** |"), "{md}");
        assert!(md.contains("| c | x |  |  |"), "{md}");
        assert_eq!(s.missed(), 1);
    }
}
