//! Finding a node's agent process through `/proc`, so that a restarted control plane adopts
//! the agents it started before instead of starting duplicates.
//!
//! A process is a node's agent when its command line carries `--node-id <id>` and
//! `--data-dir <dir>` exactly and it is not a zombie. Matching both guards against pid reuse
//! and against agents of another control plane (another data dir) with the same node id.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether `pid` is the live agent of `node_id` on `data_dir`.
pub fn is_agent(pid: u32, node_id: &str, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline_names(&cmdline, node_id, data_dir) && !is_zombie(pid)
}

/// Every live agent of `node_id` on `data_dir` (more than one only if something went badly
/// wrong; the data-dir lock makes all but one exit at once), from a fresh read of `/proc`.
#[cfg(test)]
pub fn find_agents(node_id: &str, data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    agents_among(&all, node_id, data_dir)
}

/// The live agents of `node_id` on `data_dir` among `candidates`. A child the agent has
/// forked but not yet exec'd (the engine runs `df`) still shows the agent's command line for
/// a moment; processes whose parent is itself a match are such children, not agents.
pub fn agents_among(candidates: &[u32], node_id: &str, data_dir: &Path) -> Vec<u32> {
    let matches: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|pid| is_agent(*pid, node_id, data_dir))
        .collect();
    matches
        .iter()
        .copied()
        .filter(|pid| parent(*pid).is_none_or(|ppid| !matches.contains(&ppid)))
        .collect()
}

/// One read of every process's command line: the processes naming a node under `nodes_dir`
/// (`--node-id <id> --data-dir <nodes_dir>/<id>`), by node id. Candidates only, for
/// [`agents_among`] to confirm: the snapshot ages, and zombies and forked children are in it.
pub fn scan(nodes_dir: &Path) -> HashMap<String, Vec<u32>> {
    let mut found: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let value = |flag: &str| {
            args.windows(2)
                .find(|w| w[0] == flag.as_bytes())
                .map(|w| w[1])
        };
        let (Some(node), Some(dir)) = (value("--node-id"), value("--data-dir")) else {
            continue;
        };
        let Ok(node) = std::str::from_utf8(node) else {
            continue;
        };
        if Path::new(OsStr::from_bytes(dir)) == nodes_dir.join(node) {
            found.entry(node.to_owned()).or_default().push(pid);
        }
    }
    found
}

/// The parent pid, from `/proc/PID/stat` (the field after the state).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline_names(cmdline: &[u8], node_id: &str, data_dir: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let has = |flag: &str, value: &[u8]| {
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value)
    };
    has("--node-id", node_id.as_bytes()) && has("--data-dir", OsStr::as_bytes(data_dir.as_os_str()))
}

fn is_zombie(pid: u32) -> bool {
    // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')' (comm may hold any
    // character, including ')' and spaces).
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn command_lines_match_on_exact_pairs() {
        let dir = PathBuf::from("/data/nodes/b-1-1");
        let line = b"mooring-agent\0run\0--node-id\0b-1-1\0--data-dir\0/data/nodes/b-1-1\0";
        assert!(cmdline_names(line, "b-1-1", &dir));
        assert!(!cmdline_names(line, "b-1-10", &dir), "no prefix matches");
        assert!(!cmdline_names(
            line,
            "b-1-1",
            Path::new("/other/nodes/b-1-1")
        ));
        let swapped = b"mooring-agent\0run\0--data-dir\0b-1-1\0--node-id\0/data/nodes/b-1-1\0";
        assert!(!cmdline_names(swapped, "b-1-1", &dir));
    }

    #[test]
    fn finds_a_real_process_by_its_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = format!("n-{}", std::process::id());
        // `sh -c` keeps its own arguments in its command line.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read -r line", "sh", "--node-id", &node, "--data-dir"])
            .arg(dir.path())
            // `read` is a builtin blocked on this pipe: `sh` forks nothing, so no child
            // of it can briefly show its command line.
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a stand-in process");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Wait until /proc shows the command line (the spawn returns before it is set).
        while !is_agent(pid, &node, dir.path()) || find_agents(&node, dir.path()) != vec![pid] {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} never matched alone"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!is_agent(pid, &node, dir.path()));
        assert!(find_agents(&node, dir.path()).is_empty());
    }

    #[test]
    fn a_scan_finds_a_node_under_its_nodes_dir_only() {
        let nodes = tempfile::tempdir().expect("tempdir");
        let node = format!("n-scan-{}", std::process::id());
        let dir = nodes.path().join(&node);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read -r line", "sh", "--node-id", &node, "--data-dir"])
            .arg(&dir)
            // `read` is a builtin blocked on this pipe: `sh` forks nothing, so no child
            // of it can briefly show its command line.
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a stand-in process");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let found = scan(nodes.path());
            let candidates = found.get(&node).cloned().unwrap_or_default();
            if candidates.contains(&pid) && agents_among(&candidates, &node, &dir) == vec![pid] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} never found by a scan: {found:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let other = tempfile::tempdir().expect("tempdir");
        assert!(!scan(other.path()).contains_key(&node), "another nodes dir");
        child.kill().expect("kill");
        child.wait().expect("reap");
        let candidates = scan(nodes.path()).remove(&node).unwrap_or_default();
        assert!(agents_among(&candidates, &node, &dir).is_empty());
    }

    #[test]
    fn a_child_with_the_agents_command_line_is_not_an_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = format!("n-child-{}", std::process::id());
        let d = dir.path().to_string_lossy().into_owned();
        // The parent runs a child carrying the same `--node-id`/`--data-dir` pair, as a forked
        // but not yet exec'd child of an agent does.
        let inner = format!("sh -c 'sleep 30; true' sh --node-id {node} --data-dir {d}; true");
        let mut parent = std::process::Command::new("sh")
            .args(["-c", &inner, "sh", "--node-id", &node, "--data-dir", &d])
            .spawn()
            .expect("spawn");
        let pid = parent.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let all: Vec<u32> = fs::read_dir("/proc")
                .expect("/proc")
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| is_agent(*p, &node, dir.path()))
                .collect();
            if all.len() == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child never appeared: {all:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(find_agents(&node, dir.path()), vec![pid]);
        let _ = std::process::Command::new("pkill")
            .arg("-P")
            .arg(pid.to_string())
            .status();
        parent.kill().expect("kill");
        parent.wait().expect("reap");
    }
}
