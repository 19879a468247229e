//! Aligned text tables for `ps`, `nodes` and the events of `get`.
use prost_types::Timestamp;

use minkube::convert::{node_state_name, task_state_name};
use minkube::pb::{HostStats, Node, Task, TaskEvent};

use super::names::{cores, port_binding, port_spec};
use super::timefmt::{age, age_of, elapsed, rfc3339_seconds};

/// Space between columns.
const GAP: &str = "   ";

/// Rows of cells under a header, rendered with every column padded to its
/// widest cell. The last column is not padded, so lines carry no trailing blanks.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, each ending in '\n'.
    pub fn render(&self) -> String {
        let ncols = std::iter::once(&self.header)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// "-" for an empty cell so columns stay readable.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// The PORTS cell: bound host ports once known, else the requested ports.
pub fn task_ports(t: &Task) -> String {
    let bound: Vec<String> = t
        .status
        .as_ref()
        .map(|s| s.ports.iter().map(|b| port_binding(b, false)).collect())
        .unwrap_or_default();
    let ports = if bound.is_empty() {
        t.spec
            .as_ref()
            .map(|s| s.ports.iter().map(port_spec).collect())
            .unwrap_or_default()
    } else {
        bound
    };
    if ports.is_empty() {
        "-".to_string()
    } else {
        ports.join(",")
    }
}

/// The `ps` table.
pub fn tasks(tasks: &[Task], now: &Timestamp) -> String {
    let mut t = Table::new(&[
        "ID", "NAME", "IMAGE", "STATE", "NODE", "PORTS", "AGE", "REASON",
    ]);
    for task in tasks {
        let spec = task.spec.clone().unwrap_or_default();
        let status = task.status.clone().unwrap_or_default();
        t.row(vec![
            task.id.clone(),
            or_dash(&spec.name),
            or_dash(&spec.image),
            task_state_name(status.state()).to_string(),
            or_dash(&status.node_name),
            task_ports(task),
            age_of(task.created_at.as_ref(), now),
            or_dash(&status.reason),
        ]);
    }
    t.render()
}

/// The line under a partial `ps` listing.
pub fn ps_footer(shown: usize, total: u64, has_next: bool) -> Option<String> {
    let shown_all = u64::try_from(shown).is_ok_and(|n| n >= total);
    (has_next && !shown_all).then(|| format!("showing {shown} of {total} (more: --all)"))
}

/// A size given in MiB, short: "512MB" below 1 GiB, else "39.1GB".
pub fn size_mb(mb: u64) -> String {
    if mb < 1024 {
        format!("{mb}MB")
    } else {
        // Display only: rounding to one decimal is the point.
        format!("{:.1}GB", mb as f64 / 1024.0)
    }
}

/// The three load averages as `uptime` shows them: "0.52 0.40 0.31".
pub fn load_average(s: &HostStats) -> String {
    format!("{:.2} {:.2} {:.2}", s.load1, s.load5, s.load15)
}

/// The CPU%, MEM-AVAIL, DISK-AVAIL and LOAD cells; "-" each while the node
/// has not reported statistics.
fn stats_cells(stats: Option<&HostStats>) -> [String; 4] {
    match stats {
        None => std::array::from_fn(|_| "-".to_string()),
        Some(s) => [
            format!("{:.1}%", s.cpu_percent),
            format!("{}MB", s.memory_available_mb),
            size_mb(s.disk_available_mb),
            load_average(s),
        ],
    }
}

/// `ready`, `ready,cordoned`, `down (lost)`: connection state, then the
/// availability when the scheduler may not use the node.
fn node_state_cell(n: &Node) -> String {
    let mut cell = node_state_name(n.state()).to_string();
    if !matches!(
        n.availability(),
        minkube::pb::NodeAvailability::Active | minkube::pb::NodeAvailability::Unspecified
    ) {
        cell.push(',');
        cell.push_str(minkube::convert::availability_name(n.availability()));
    }
    if n.lost {
        cell.push_str(" (lost)");
    }
    cell
}

/// The `nodes` table: capacity and reservations, then the host statistics
/// of the latest heartbeat (CPU use, memory and disk available, load).
pub fn nodes(nodes: &[Node], now: &Timestamp) -> String {
    let mut t = Table::new(&[
        "NAME",
        "ID",
        "STATE",
        "CPU",
        "MEMORY",
        "ALLOCATED",
        "TASKS",
        "CPU%",
        "MEM-AVAIL",
        "DISK-AVAIL",
        "LOAD",
        "LAST-HEARTBEAT",
    ]);
    for n in nodes {
        let cap = n.capacity.unwrap_or_default();
        let alloc = n.allocated.unwrap_or_default();
        let [cpu_use, mem_avail, disk_avail, load] = stats_cells(n.stats.as_ref());
        t.row(vec![
            n.name.clone(),
            n.id.clone(),
            node_state_cell(n),
            cores(cap.cpu_cores),
            format!("{}MB", cap.memory_mb),
            format!("{}MB/{}cpu", alloc.memory_mb, cores(alloc.cpu_cores)),
            n.active_tasks.to_string(),
            cpu_use,
            mem_avail,
            disk_avail,
            load,
            n.last_heartbeat.as_ref().map_or_else(
                || "-".to_string(),
                |h| format!("{} ago", age(elapsed(h, now))),
            ),
        ]);
    }
    t.render()
}

/// The EVENTS table of `get`.
pub fn events(events: &[TaskEvent]) -> String {
    let mut t = Table::new(&["TIME", "STATE", "ATTEMPT", "REASON"]);
    for e in events {
        t.row(vec![
            e.timestamp
                .as_ref()
                .map_or_else(|| "-".to_string(), rfc3339_seconds),
            task_state_name(e.state()).to_string(),
            e.attempt.to_string(),
            or_dash(&e.reason),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use minkube::pb::{
        HostStats, NodeState, PortBinding, PortSpec, Protocol, Resources, TaskSpec, TaskState,
        TaskStatus,
    };

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn columns_align_without_trailing_blanks() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.row(vec!["xxxx".into(), "y".into(), "z z".into()]);
        t.row(vec!["1".into(), String::new(), String::new()]);
        assert_eq!(t.render(), "A      LONGER   C\nxxxx   y        z z\n1\n");
    }

    #[test]
    fn ps_rows() {
        let task = Task {
            id: "0190-aaaa".into(),
            spec: Some(TaskSpec {
                name: "web".into(),
                image: "busybox".into(),
                ports: vec![PortSpec {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                }],
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                node_name: "node-a".into(),
                ports: vec![PortBinding {
                    container_port: 8080,
                    protocol: Protocol::Tcp as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 49153,
                }],
                ..Default::default()
            }),
            created_at: Some(ts(100)),
            ..Default::default()
        };
        let pending = Task {
            id: "0190-bbbb".into(),
            spec: Some(TaskSpec {
                name: "big".into(),
                image: "busybox".into(),
                ports: vec![PortSpec {
                    container_port: 53,
                    protocol: Protocol::Udp as i32,
                }],
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                reason: "no ready node with 128 MB free".into(),
                ..Default::default()
            }),
            created_at: Some(ts(220)),
            ..Default::default()
        };
        let out = tasks(&[task, pending], &ts(400));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            vec![
                "ID          NAME   IMAGE     STATE     NODE     PORTS             AGE   REASON",
                "0190-aaaa   web    busybox   running   node-a   49153->8080/tcp   5m    -",
                "0190-bbbb   big    busybox   pending   -        53/udp            3m    no ready node with 128 MB free",
            ]
        );
    }

    #[test]
    fn footer_only_when_more() {
        assert_eq!(
            ps_footer(100, 2345, true).as_deref(),
            Some("showing 100 of 2345 (more: --all)")
        );
        assert_eq!(ps_footer(3, 3, false), None);
        // The last page looked at stopped short of the end, but holds all.
        assert_eq!(ps_footer(3, 3, true), None);
    }

    #[test]
    fn node_rows() {
        let n = Node {
            id: "n1".into(),
            name: "node-a".into(),
            state: NodeState::Ready as i32,
            capacity: Some(Resources {
                cpu_cores: 2.0,
                memory_mb: 3900,
            }),
            allocated: Some(Resources {
                cpu_cores: 0.5,
                memory_mb: 128,
            }),
            last_heartbeat: Some(ts(95)),
            active_tasks: 2,
            ..Default::default()
        };
        let fresh = Node {
            name: "node-b".into(),
            id: "n2".into(),
            stats: None,
            ..n.clone()
        };
        let n = Node {
            stats: Some(HostStats {
                cpu_percent: 12.345,
                memory_total_mb: 3900,
                memory_available_mb: 2100,
                disk_total_mb: 100_000,
                disk_available_mb: 40_000,
                load1: 0.5,
                load5: 1.25,
                load15: 0.125,
                ..Default::default()
            }),
            ..n
        };
        let out = nodes(&[n, fresh], &ts(100));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            vec![
                "NAME     ID   STATE   CPU   MEMORY   ALLOCATED      TASKS   CPU%    MEM-AVAIL   DISK-AVAIL   LOAD             LAST-HEARTBEAT",
                "node-a   n1   ready   2     3900MB   128MB/0.5cpu   2       12.3%   2100MB      39.1GB       0.50 1.25 0.12   5s ago",
                "node-b   n2   ready   2     3900MB   128MB/0.5cpu   2       -       -           -            -                5s ago",
            ]
        );
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(size_mb(0), "0MB");
        assert_eq!(size_mb(1023), "1023MB");
        assert_eq!(size_mb(1024), "1.0GB");
        assert_eq!(size_mb(40_000), "39.1GB");
        assert_eq!(size_mb(3 * 1024 * 1024), "3072.0GB");
    }

    #[test]
    fn event_rows() {
        let e = TaskEvent {
            state: TaskState::Failed as i32,
            timestamp: Some(ts(1_700_000_000)),
            reason: "exited with code 3".into(),
            attempt: 1,
            ..Default::default()
        };
        assert_eq!(
            events(&[e]),
            "TIME                   STATE    ATTEMPT   REASON\n2023-11-14T22:13:20Z   failed   1         exited with code 3\n"
        );
    }
}
