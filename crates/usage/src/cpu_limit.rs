//! How many cores this process may use when that is fewer than the machine
//! has: a container's CPU quota (cgroup v2 `cpu.max`, v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the tightest along the
//! cgroup's ancestors) or an affinity mask (`available_parallelism`).
//! [`crate::counting::SpareCpu`] then judges spare CPU within that limit,
//! not only machine-wide: a quiet host says nothing about a throttled
//! container.
//!
//! Quotas are read from the usual mount points under `/sys/fs/cgroup`,
//! both at the process's cgroup path and at the mount's root (a container
//! with its own cgroup namespace, or one whose cgroup is mounted as the
//! root); a layout not found there counts as no quota.

use std::path::{Path, PathBuf};

/// Cores this process may use, when fewer than `machine_cpus`.
pub(crate) fn cpu_limit(machine_cpus: u32) -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quota = quota_cores(Path::new("/sys/fs/cgroup"), &cgroups);
    let affinity = std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as f64);
    let cores = match (quota, affinity) {
        (Some(q), Some(a)) => q.min(a),
        (q, a) => q.or(a)?,
    };
    (cores < f64::from(machine_cpus)).then_some(cores)
}

/// The tightest CPU quota, in cores, of the cgroups in `proc_cgroup` (the
/// text of `/proc/self/cgroup`) and their ancestors, under `root`.
fn quota_cores(root: &Path, proc_cgroup: &str) -> Option<f64> {
    let mut tightest: Option<f64> = None;
    let mut consider = |q: Option<f64>| {
        if let Some(q) = q.filter(|q| *q > 0.0) {
            tightest = Some(tightest.map_or(q, |t| t.min(q)));
        }
    };
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            // cgroup v2: one hierarchy.
            for dir in dirs(root, path) {
                consider(read_cpu_max(&dir.join("cpu.max")));
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            // cgroup v1: the cpu controller's hierarchy, mounted alone or
            // with cpuacct.
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                for dir in dirs(&root.join(mount), path) {
                    consider(read_cfs_quota(&dir));
                }
            }
        }
    }
    tightest
}

/// `base` joined with `path` and each of its ancestors, down to `base`.
fn dirs(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut at = Some(Path::new(path.trim_start_matches('/')));
    while let Some(p) = at {
        out.push(base.join(p));
        at = p.parent();
    }
    out
}

/// cgroup v2 `cpu.max`: `max 100000` (no quota) or `QUOTA PERIOD`.
fn read_cpu_max(file: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(file).ok()?)
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_ascii_whitespace();
    let quota = fields.next()?.parse::<f64>().ok()?;
    let period = fields
        .next()
        .map_or(Some(100_000.0), |p| p.parse::<f64>().ok())?;
    (period > 0.0).then(|| quota / period)
}

/// cgroup v1 `cpu.cfs_quota_us` (`-1`: no quota) over `cpu.cfs_period_us`.
fn read_cfs_quota(dir: &Path) -> Option<f64> {
    let read = |name: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
    };
    let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cpu_max_is_a_quota_over_a_period() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max("100 0"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    /// v2: the tightest quota along the path (a pod's limit sits above its
    /// container's cgroup); v1: the cpu controller's files, mounted alone
    /// or with cpuacct; no files or no quota: none.
    #[test]
    fn the_tightest_quota_along_the_cgroup_path_counts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("kubepods/pod1/cpu.max"), "250000 100000\n");
        write(&r.join("kubepods/pod1/ctr/cpu.max"), "max 100000\n");
        write(&r.join("kubepods/cpu.max"), "max 100000\n");
        assert_eq!(quota_cores(r, "0::/kubepods/pod1/ctr\n"), Some(2.5));
        // A namespaced container sees its own cgroup as the root.
        write(&r.join("cpu.max"), "50000 100000\n");
        assert_eq!(quota_cores(r, "0::/\n"), Some(0.5));
        assert_eq!(quota_cores(r, "0::/kubepods/pod1/ctr\n"), Some(0.5));

        let v1 = tempfile::tempdir().unwrap();
        let r = v1.path();
        write(
            &r.join("cpu,cpuacct/docker/abc/cpu.cfs_quota_us"),
            "150000\n",
        );
        write(
            &r.join("cpu,cpuacct/docker/abc/cpu.cfs_period_us"),
            "100000\n",
        );
        write(&r.join("cpu,cpuacct/cpu.cfs_quota_us"), "-1\n");
        write(&r.join("cpu,cpuacct/cpu.cfs_period_us"), "100000\n");
        let cgroups = "12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(quota_cores(r, cgroups), Some(1.5));
        assert_eq!(quota_cores(r, "3:cpu,cpuacct:/\n"), None);
        assert_eq!(quota_cores(r, "4:memory:/docker/abc\n"), None);
        assert_eq!(quota_cores(Path::new("/nonexistent"), cgroups), None);
        assert_eq!(quota_cores(r, "garbage"), None);
    }

    #[test]
    fn a_limit_is_only_one_below_the_machine() {
        assert_eq!(cpu_limit(0), None);
        assert!(cpu_limit(u32::MAX).is_some_and(|c| c > 0.0));
    }
}
