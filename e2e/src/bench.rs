//! What the benchmark programs (`bench_stun`, `bench_relay`, …) share: reading a server process's
//! CPU time and memory from `/proc`, medians, and extra-argument splitting. Benchmarks print
//! figures; nothing here asserts on them.

use std::process::Command;

/// The median of `values` (sorted in place); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Splits a flag's value such as `"--workers 2 --log warn"` into arguments.
pub fn split_args(extra: &str) -> Vec<String> {
    extra.split_whitespace().map(str::to_owned).collect()
}

/// The kernel's clock ticks per second (USER_HZ), from `getconf CLK_TCK`; 100 when unknown.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time process `pid` has used so far (user + system, all threads), in seconds; 0 when it
/// cannot be read.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / ticks_per_second
}

/// The whole machine's CPU time so far from `/proc/stat`, in seconds: (busy, interrupt work,
/// all), all CPUs together; zeros when it cannot be read. Interrupt work (on loopback mostly the
/// kernel's receive path in softirq context) is charged to no process.
pub fn machine_cpu_seconds(ticks_per_second: f64) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal ..."
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let [_, _, _, idle, iowait, irq, softirq, _] = fields[..] else {
        return (0.0, 0.0, 0.0);
    };
    let all: f64 = fields.iter().sum();
    (
        (all - idle - iowait) / ticks_per_second,
        (irq + softirq) / ticks_per_second,
        all / ticks_per_second,
    )
}

/// Time the threads of process `pid` have spent runnable but waiting for a CPU so far, in
/// seconds (the second field of `/proc/PID/task/*/schedstat`; threads that ended are not
/// counted); 0 when it cannot be read. On an overloaded machine this is where a latency tail
/// comes from.
pub fn runqueue_wait_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// A `/proc/PID/status` memory field such as `"VmRSS:"` or `"VmHWM:"`, in KiB; 0 when absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn own_process_figures() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:") > 0);
        assert!(cpu_seconds(pid, clock_ticks()) >= 0.0);
        assert_eq!(status_kib(pid, "NoSuchField:"), 0);
        let (busy, interrupts, all) = machine_cpu_seconds(clock_ticks());
        assert!(
            all > 0.0 && busy <= all && interrupts <= busy,
            "{busy} {interrupts} {all}"
        );
        assert_eq!(runqueue_wait_seconds(u32::MAX), 0.0);
    }
}
