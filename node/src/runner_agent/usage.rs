//! The host usage probe: the cpu, memory and disk percentages a runner reports, read from this
//! host with sysinfo ([`UsageSource::Host`]) or, for simulated runners, a bounded random walk
//! ([`UsageSource::Synthetic`]). It knows nothing of sessions or the wire; the session takes one
//! sample per report.

use rand::Rng;

/// Where usage numbers come from.
#[derive(Debug, Clone, Copy)]
pub enum UsageSource {
    /// This host, read with sysinfo.
    Host,
    /// A random walk, for simulated runners.
    Synthetic,
}

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
            UsageSource::Host => (sysinfo::System::new(), sysinfo::Disks::new_with_refreshed_list()),
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
            UsageSource::Host => {
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

fn percent(used: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 100.0 / total as f64) as f32
    }
}
