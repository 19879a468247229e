//! Stopping the processes the bench started.
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Asks `child` to stop (SIGTERM) and waits up to `grace` for it, then kills
/// it (SIGKILL): a process that hangs in its shutdown (say, on a wedged
/// Docker engine) must not hang the bench.
pub fn stop(child: &mut Child, grace: Duration) -> std::io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `script` and waits until it has printed its first line.
    fn spawn(script: &str) -> Child {
        use std::io::BufRead;
        let mut child = match Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot start sh: {e}"),
        };
        if let Some(out) = child.stdout.take() {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        child
    }

    #[test]
    fn a_process_that_stops_on_sigterm_is_waited_for() {
        let mut child = spawn("echo started; exec sleep 30");
        assert!(stop(&mut child, Duration::from_secs(10)).is_ok());
        let status = child.try_wait().ok().flatten();
        // Ended by the SIGTERM, not by the kill.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(15));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        // The line comes once the trap is in place.
        let mut child = spawn("trap '' TERM; echo trapped; exec sleep 30");
        let start = Instant::now();
        assert!(stop(&mut child, Duration::from_millis(300)).is_ok());
        assert!(start.elapsed() < Duration::from_secs(10));
        let status = child.try_wait().ok().flatten();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(9));
    }
}
