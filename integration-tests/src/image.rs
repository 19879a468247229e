//! The test image: Debian's static busybox imported into Docker under a tag
//! unique to the run (no registry is reachable, nothing can be pulled).
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::docker::{containers_with_label, docker, remove_containers};

/// Where the static busybox comes from (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the image's /bin.
const APPLETS: &[&str] = &[
    "sh", "sleep", "true", "false", "echo", "env", "httpd", "cat", "ls", "wget",
];

/// Label key the image carries (and so every container made from it).
pub const IMAGE_RUN_LABEL: &str = "minkube.test-run";
/// Label key every task spec of a test carries (user labels cannot start
/// with "minkube.", hence the dash).
pub const RUN_LABEL: &str = "minkube-test-run";

/// The image of one run. Dropping it removes the containers of the run (by
/// the run's labels) and then the image: only what this run created.
pub struct TestImage {
    run_id: String,
    tag: String,
}

impl TestImage {
    /// Builds `minkube-test:<run_id>` with `docker import`.
    pub fn build(run_id: &str) -> Self {
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: install the busybox-static package"
        );
        let root = tempfile::tempdir().expect("temp dir for the image rootfs");
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).expect("create rootfs/bin");
        std::fs::create_dir_all(root.path().join("tmp")).expect("create rootfs/tmp");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox into the rootfs");
        for applet in APPLETS {
            symlink("busybox", bin.join(applet)).expect("link a busybox applet");
        }
        let tag = format!("minkube-test:{run_id}");
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let tar_out = tar.stdout.take().expect("tar stdout");
        let import = Command::new("docker")
            .args([
                "import",
                "--change",
                &format!("LABEL {IMAGE_RUN_LABEL}={run_id}"),
                "--change",
                "ENV PATH=/bin",
                "-",
                &tag,
            ])
            .stdin(Stdio::from(tar_out))
            .output()
            .expect("run docker import");
        let tar_status = tar.wait().expect("wait for tar");
        assert!(tar_status.success(), "tar of the test rootfs failed");
        assert!(
            import.status.success(),
            "docker import of {tag} failed: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        Self {
            run_id: run_id.to_string(),
            tag,
        }
    }

    /// The image reference to put in task specs.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Removes every container of this run, whatever state it is in.
    pub fn remove_run_containers(&self) {
        // A create sent by an agent just before it was killed may still
        // complete inside the engine: look again until a listing is empty.
        for _ in 0..5 {
            let mut ids = containers_with_label(&format!("{RUN_LABEL}={}", self.run_id));
            ids.extend(containers_with_label(&format!(
                "{IMAGE_RUN_LABEL}={}",
                self.run_id
            )));
            if ids.is_empty() {
                return;
            }
            ids.sort();
            ids.dedup();
            remove_containers(&ids);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        self.remove_run_containers();
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}
