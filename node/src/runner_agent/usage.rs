//! The host probe: the cpu, memory and disk percentages a runner reports, and the host's
//! capacity (logical CPUs, memory GiB, disk GiB of the filesystem holding the work directory,
//! GPU devices), read from this host with sysinfo ([`UsageSource::Host`]) or, for simulated
//! runners, a bounded random walk and a fixed capacity ([`UsageSource::Synthetic`]). It knows
//! nothing of sessions or the wire; the session takes one sample per report.

use std::path::{Path, PathBuf};

use corral_model::Resources;
use rand::Rng;

/// Where usage numbers come from.
#[derive(Debug, Clone)]
pub enum UsageSource {
    /// This host, read with sysinfo; disk capacity is that of the filesystem holding the
    /// given work directory.
    Host { work_dir: PathBuf },
    /// A random walk, for simulated runners.
    Synthetic,
}

/// What a simulated runner reports as its capacity.
const SYNTHETIC_CAPACITY: Resources = Resources { cpu: 16, memory_gib: 64, disk_gib: 500, gpu: 0 };
const GIB: u64 = 1 << 30;

/// Reads usage numbers.
pub(super) struct UsageProbe {
    source: UsageSource,
    system: sysinfo::System,
    disks: sysinfo::Disks,
    synthetic: [f32; 3],
}

impl UsageProbe {
    pub(super) fn new(source: UsageSource) -> Self {
        let mut rng = rand::thread_rng();
        let (system, disks) = match source {
            UsageSource::Host { .. } => (sysinfo::System::new(), sysinfo::Disks::new_with_refreshed_list()),
            UsageSource::Synthetic => (sysinfo::System::new(), sysinfo::Disks::new()),
        };
        UsageProbe {
            source,
            system,
            disks,
            synthetic: [rng.gen_range(5.0..60.0), rng.gen_range(5.0..60.0), rng.gen_range(5.0..60.0)],
        }
    }

    /// cpu, memory and disk usage in percent.
    pub(super) fn sample(&mut self) -> [f32; 3] {
        match self.source {
            UsageSource::Host { .. } => {
                self.system.refresh_cpu_usage();
                self.system.refresh_memory();
                self.disks.refresh(true);
                let cpu = self.system.global_cpu_usage();
                let memory = percent(self.system.used_memory(), self.system.total_memory());
                let (total, available) = self
                    .disks
                    .list()
                    .iter()
                    .fold((0u64, 0u64), |(t, a), d| (t + d.total_space(), a + d.available_space()));
                let disk = percent(total.saturating_sub(available), total);
                [cpu, memory, disk].map(|v| if v.is_finite() { v.clamp(0.0, 100.0) } else { 0.0 })
            }
            UsageSource::Synthetic => {
                let mut rng = rand::thread_rng();
                for v in &mut self.synthetic {
                    *v = (*v + rng.gen_range(-3.0..3.0)).clamp(1.0, 95.0);
                }
                self.synthetic
            }
        }
    }
}

impl UsageProbe {
    /// The host's totals: logical CPUs, whole GiB of memory, whole GiB of the filesystem that
    /// holds the work directory (the disk sandboxes will use), and GPU devices.
    pub(super) fn capacity(&mut self) -> Resources {
        let work_dir = match &self.source {
            UsageSource::Synthetic => return SYNTHETIC_CAPACITY,
            UsageSource::Host { work_dir } => work_dir.clone(),
        };
        self.system.refresh_memory();
        self.system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        self.disks.refresh(true);
        let cpu = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(0);
        let cpu = cpu.max(self.system.cpus().len() as u64);
        let work_dir = std::fs::canonicalize(&work_dir).unwrap_or(work_dir);
        let mounts: Vec<(&Path, u64)> = self.disks.list().iter().map(|d| (d.mount_point(), d.total_space())).collect();
        Resources {
            cpu,
            memory_gib: self.system.total_memory() / GIB,
            disk_gib: filesystem_bytes(&work_dir).unwrap_or_else(|| disk_holding(&work_dir, &mounts)) / GIB,
            gpu: gpu_devices(Path::new("/dev")),
        }
    }
}

/// Total bytes of the filesystem holding `path`, as `statvfs(3)` says (whatever its kind:
/// sysinfo's disk list leaves out tmpfs and some overlays); `None` when it cannot be read.
fn filesystem_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is writable memory of the type
    // statvfs fills; nothing is read from it unless the call succeeded.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized `stat`.
    let stat = unsafe { stat.assume_init() };
    // `fsblkcnt_t` is u64 on 64-bit Linux but 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    let blocks = u64::from(stat.f_blocks);
    Some(blocks.saturating_mul(stat.f_frsize))
}

/// Total bytes of the filesystem mounted at the longest mount point that holds `path` (when
/// statvfs cannot say).
fn disk_holding(path: &Path, mounts: &[(&Path, u64)]) -> u64 {
    mounts
        .iter()
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.as_os_str().len())
        .map_or(0, |(_, total)| *total)
}

/// GPU devices the host exposes: NVIDIA's `/dev/nvidia0`, `/dev/nvidia1`, … (not the control
/// nodes `nvidiactl`, `nvidia-uvm`); 0 when there are none.
fn gpu_devices(dev: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dev) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64
}

fn percent(used: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 100.0 / total as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_is_the_longest_mount_holding_the_work_dir() {
        let mounts = [(Path::new("/"), 100 * GIB), (Path::new("/var"), 40 * GIB), (Path::new("/var/lib"), 7 * GIB)];
        assert_eq!(disk_holding(Path::new("/var/lib/corral"), &mounts), 7 * GIB);
        assert_eq!(disk_holding(Path::new("/var/log"), &mounts), 40 * GIB);
        assert_eq!(disk_holding(Path::new("/home/x"), &mounts), 100 * GIB);
        assert_eq!(disk_holding(Path::new("/variable"), &mounts), 100 * GIB, "path components, not prefixes");
        assert_eq!(disk_holding(Path::new("/x"), &[]), 0);
    }

    #[test]
    fn gpus_are_the_numbered_nvidia_devices() {
        let dev = tempfile::tempdir().expect("tempdir");
        for name in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dev.path().join(name), b"").expect("write");
        }
        assert_eq!(gpu_devices(dev.path()), 2);
        assert_eq!(gpu_devices(&dev.path().join("missing")), 0);
    }

    #[test]
    fn the_work_dirs_filesystem_has_a_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(filesystem_bytes(dir.path()).is_some_and(|bytes| bytes > 0));
        assert_eq!(filesystem_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn this_host_has_cpus_memory_and_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = UsageProbe::new(UsageSource::Host { work_dir: dir.path().to_path_buf() }).capacity();
        assert!(capacity.cpu >= 1 && capacity.memory_gib >= 1 && capacity.disk_gib >= 1, "{capacity:?}");
    }
}
