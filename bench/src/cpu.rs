//! CPU time of this process, so the load generator can report what each message cost it:
//! a slow client hides a fast broker, and this makes that visible.
#![allow(unsafe_code)]

use std::time::Duration;

/// User plus system CPU time used by every thread of this process so far.
pub fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes into the struct we pass, which is sized for it and
    // lives across the call; RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        // Cannot happen for RUSAGE_SELF with a valid pointer; report zero rather than panic.
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (zeroed before, in any case).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_when_we_spin() {
        let before = process_cpu_time();
        let until = std::time::Instant::now() + Duration::from_millis(30);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(process_cpu_time() >= before + Duration::from_millis(10));
    }
}
