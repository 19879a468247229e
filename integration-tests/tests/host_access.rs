//! Privileged containers, the host's network and host mounts: refused
//! unless the manager allows them, then for admins only, and when allowed
//! the container really gets them (checked with `docker inspect` and from
//! inside the container). Privileged mode is checked up to the manager's
//! acceptance here: this machine's nested container runtime cannot start a
//! privileged container at all (`docker run --privileged` fails too); the
//! agent's unit test `docker_create` shows it reaches the create request.
#![allow(clippy::unwrap_used)]

use minkube::pb::{CreateTaskRequest, HostMount, TaskState};
use minkube_integration_tests::docker::docker_ok;
use minkube_integration_tests::{Cluster, WAIT};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn host_access_is_refused_when_the_manager_does_not_allow_it() {
    let cluster = Cluster::start(&[]).await;
    for (what, flag) in [
        ("privileged", "--allow-privileged"),
        ("host_network", "--allow-host-network"),
        ("host_mounts", "--allow-host-mounts"),
    ] {
        let mut spec = cluster.spec("wants-host", &["true"]);
        match what {
            "privileged" => spec.privileged = true,
            "host_network" => spec.host_network = true,
            _ => {
                spec.host_mounts = vec![HostMount {
                    host_path: "/etc".into(),
                    container_path: "/host-etc".into(),
                    read_only: true,
                }]
            }
        }
        let err = cluster
            .control()
            .await
            .create_task(CreateTaskRequest { spec: Some(spec) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains(flag) && err.message().contains(what),
            "{err:?}"
        );
    }
    assert!(cluster.list_all(&[]).await.is_empty(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_allowed_only_admins_get_it_and_the_container_really_has_it() {
    let cluster = Cluster::builder()
        .secure()
        .manager_switch("--allow-privileged")
        .manager_switch("--allow-host-network")
        .manager_switch("--allow-host-mounts")
        .agents(&["a"])
        .start()
        .await;
    let host_dir = cluster.dir().join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello.txt"), "hello from the host\n").unwrap();
    let mount = format!("{}:/data:ro", host_dir.display());
    let label = format!(
        "{}={}",
        minkube_integration_tests::image::RUN_LABEL,
        cluster.run_id()
    );
    let script = "cat /data/hello.txt; if touch /data/x 2>/dev/null; then echo writable; else echo read-only; fi";
    let run = |extra: &'static [&'static str]| {
        let mut args = vec![
            "run".to_string(),
            "hosty".into(),
            "--image".into(),
            cluster.image().into(),
            "--memory".into(),
            "16".into(),
            "--label".into(),
            label.clone(),
            "--mount".into(),
            mount.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
        args
    };

    // An operator may not, even though the manager allows it; not even
    // privileged mode alone.
    let admin = cluster.security().admin_token.clone();
    let op = cluster
        .cli_env(
            &[("MINKUBE_TOKEN", &admin)],
            &["token", "create", "op", "--role", "operator"],
        )
        .await;
    let op = String::from_utf8_lossy(&op.stdout).trim().to_string();
    for extra in [&["--host-network"][..], &["--privileged"][..]] {
        let args = run(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cluster.cli_env(&[("MINKUBE_TOKEN", &op)], &args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("only admins"),
            "{err}"
        );
    }

    // An admin may: on the host's network, with the mount.
    let args = run(&["--host-network"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = cluster.cli_ok(&args).await.trim().to_string();
    let done = cluster
        .wait_task_state(&id, &[TaskState::Completed], WAIT)
        .await;
    let container = done.task.unwrap().status.unwrap().container_id;
    let logs = cluster.cli_ok(&["logs", &id]).await;
    assert_eq!(logs, "hello from the host\nread-only\n");
    let inspected = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}} {{json .HostConfig.Binds}}",
        &container,
    ]);
    assert_eq!(
        inspected.trim(),
        format!("host [\"{}:/data:ro\"]", host_dir.display())
    );
    // And an admin's privileged request is accepted by the manager.
    let args = run(&["--privileged"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = cluster.cli_ok(&args).await.trim().to_string();
    let shown = cluster.cli_json(&["get", &id]).await;
    assert_eq!(shown["task"]["spec"]["privileged"], true, "{shown}");
}
