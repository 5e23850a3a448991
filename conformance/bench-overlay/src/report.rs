//! Results as tables, printed aligned on the terminal and as markdown for
//! docs/performance.md, with the machine they were measured on.

use std::fmt::Write;

/// One results table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table (what is missing, caveats).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            ..Table::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// Aligned plain text for the terminal.
    pub fn text(&self) -> String {
        let w = self.widths();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        let rule: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }

    /// A GitHub-flavoured markdown table with its title in bold.
    pub fn markdown(&self) -> String {
        let mut out = format!("**{}**\n\n", self.title);
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let rule: Vec<&str> = self.headers.iter().map(|_| "---").collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// One part's results: its method (markdown prose) and tables.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub method: Vec<String>,
    pub tables: Vec<Table>,
}

impl Section {
    pub fn new(title: &str) -> Self {
        Section {
            title: title.to_string(),
            ..Section::default()
        }
    }

    pub fn method(&mut self, line: impl Into<String>) {
        self.method.push(line.into());
    }

    pub fn text(&self) -> String {
        let mut out = format!("\n=== {} ===\n", self.title);
        for t in &self.tables {
            out.push('\n');
            out.push_str(&t.text());
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        for m in &self.method {
            let _ = writeln!(out, "- {m}");
        }
        for t in &self.tables {
            out.push('\n');
            out.push_str(&t.markdown());
        }
        out
    }
}

/// What the numbers were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_before: String,
    pub tools: Vec<(String, String)>,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let tools = [("etcd", &["--version"][..]), ("iperf3", &["--version"][..])]
            .iter()
            .map(|(t, args)| (t.to_string(), first_line(t, args)))
            .collect();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            load_before: loadavg(),
            tools,
        }
    }

    pub fn markdown(&self, commit: &str) -> String {
        let mut out = String::from("### Machine\n\n");
        let _ = writeln!(out, "- CPUs (`nproc`): {}", self.cpus);
        let _ = writeln!(out, "- CPU: {}", self.cpu_model);
        let _ = writeln!(out, "- kernel: {}", self.kernel);
        for (tool, version) in &self.tools {
            let _ = writeln!(out, "- {tool}: {version}");
        }
        let _ = writeln!(
            out,
            "- load average before / after the run: {} / {}",
            self.load_before,
            loadavg()
        );
        let _ = writeln!(out, "- felt commit: {commit}");
        out
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn first_line(tool: &str, args: &[&str]) -> String {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not installed".into())
}

/// `1.234` with `digits` decimals, or `n/a`.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_text_and_markdown() {
        let mut t = Table::new("Throughput", &["backend", "Gbit/s"]);
        t.row(vec!["vxlan".into(), "9.50".into()]);
        t.note("noisy");
        assert_eq!(
            t.text(),
            "Throughput\nbackend  Gbit/s\n-------  ------\nvxlan    9.50\n  note: noisy\n"
        );
        assert_eq!(
            t.markdown(),
            "**Throughput**\n\n| backend | Gbit/s |\n|---|---|\n| vxlan | 9.50 |\n\n- noisy\n"
        );
        assert_eq!(num(Some(1.23456), 2), "1.23");
        assert_eq!(num(None, 2), "n/a");
    }
}
