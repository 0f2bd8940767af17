//! Sending signals to agent processes.

use std::io;

/// Sends `signal` to `pid`. A process that is already gone is not an error.
#[allow(unsafe_code)]
pub fn send(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    if pid <= 0 {
        // 0 and negative pids address process groups; never do that by accident.
        return Err(io::Error::other("refusing to signal a process group"));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}
