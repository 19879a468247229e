//! [`Runtime`] on the Docker Engine API (bollard). Containers are found by
//! minkube's labels, never by name.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::EventMessage;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;
use minkube_common::labels;
use tracing::{debug, warn, Instrument as _};

use super::docker_convert::{
    classify, event_time, info_from_inspect, pull_parts, ref_from_summary, task_labels,
};
use super::metered::docker_span;
use super::{
    ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus, EventKind,
    Runtime, RuntimeError, RuntimeEvent,
};

/// OOM events without a following die (a child process was killed) must not
/// pile up forever.
const MAX_REMEMBERED_OOMS: usize = 1024;
/// Exit code of a process killed by SIGKILL (what the OOM killer sends).
const SIGKILL_EXIT: i32 = 137;
/// How long a SIGKILLed container's state gets to show an OOM kill.
const LATE_OOM_WAIT: Duration = Duration::from_millis(100);

/// The Docker daemon, reached through `DOCKER_HOST` or the local socket.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Connects and negotiates the API version (the daemon may be older than
    /// bollard's default). `request_timeout` bounds every request, so it must
    /// exceed the stop timeout.
    pub async fn connect(request_timeout: Duration) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| classify("set up a client (check DOCKER_HOST)", e))?
            .with_timeout(request_timeout);
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| classify("negotiate the API version", e))?;
        Ok(Self { docker })
    }

    /// Docker's data root (`DockerRootDir` of `docker info`), where images
    /// and containers take their disk space. `None` if Docker does not say;
    /// host statistics then measure "/" instead.
    pub async fn root_dir(&self) -> Option<String> {
        match self.docker.info().await {
            Ok(info) => info.docker_root_dir.filter(|d| !d.is_empty()),
            Err(e) => {
                warn!(error = %e, "cannot ask Docker for its data root");
                None
            }
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let body = super::docker_create::create_body(spec);
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let err = match self
            .docker
            .create_container(Some(options), body.clone())
            .await
        {
            Ok(created) => return Ok(created.id),
            Err(e) => e,
        };
        if let DockerError::DockerResponseServerError {
            status_code: 409, ..
        } = err
        {
            // Name taken (names are for people only): retry with a unique suffix.
            let name = format!("{}-{:08x}", spec.name, rand::random::<u32>());
            debug!(name, "container name in use; retrying with a suffix");
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            return self
                .docker
                .create_container(Some(options), body)
                .await
                .map(|c| c.id)
                .map_err(|e| create_error(spec, e));
        }
        Err(create_error(spec, err))
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            // Gone already, or another removal is under way.
            Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(classify("remove the container", e)),
        }
    }

    /// Details of a container that was just started; a failed inspect does not
    /// undo the start, it only loses the port list.
    async fn describe_started(&self, container_id: &str) -> ContainerInfo {
        match self.inspect(container_id).await {
            Ok(Some(info)) => info,
            other => {
                warn!(container_id = %container_id, result = ?other, "cannot inspect a started container");
                ContainerInfo {
                    id: container_id.to_string(),
                    task_id: String::new(),
                    attempt: 0,
                    status: ContainerStatus::Running,
                    exit_code: None,
                    oom_killed: false,
                    ports: Vec::new(),
                    started_at: Some(minkube::convert::now()),
                    finished_at: None,
                }
            }
        }
    }
}

fn create_error(spec: &ContainerSpec, e: DockerError) -> RuntimeError {
    match classify("create the container", e) {
        // 404 on create means the image vanished after the check.
        RuntimeError::NotFound(message) => RuntimeError::PullFailed {
            image: spec.image.clone(),
            status: Some(404),
            message,
        },
        RuntimeError::Daemon { message, .. } if message.contains("Minimum memory limit") => {
            RuntimeError::InvalidSpec(message)
        }
        other => other,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| classify("answer a ping", e))
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => match classify("inspect the image", e) {
                RuntimeError::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        let (from, tag) = pull_parts(image);
        let mut builder = CreateImageOptionsBuilder::default().from_image(&from);
        if let Some(tag) = &tag {
            builder = builder.tag(tag);
        }
        let mut progress = self.docker.create_image(Some(builder.build()), None, None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| classify("pull the image", e))?;
        }
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        let id = self.create(spec).instrument(docker_span("create")).await?;
        let started = self
            .docker
            .start_container(&id, None)
            .instrument(docker_span("start"))
            .await;
        if let Err(e) = started {
            let err = classify("start the container", e);
            // It never ran, so it has no logs worth keeping.
            if let Err(re) = self.remove(&id).await {
                warn!(container_id = %id, error = %re, "cannot remove a container that failed to start");
            }
            return Err(err);
        }
        Ok(self.describe_started(&id).await)
    }

    async fn start_existing(&self, container_id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.docker
            .start_container(container_id, None)
            .await
            .map_err(|e| classify("start the container", e))?;
        Ok(self.describe_started(container_id).await)
    }

    async fn stop_and_remove(
        &self,
        container_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let whole = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let secs = i32::try_from(whole).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        // 304 (already stopped) is a success for bollard.
        match self
            .docker
            .stop_container(container_id, Some(options))
            .await
        {
            Ok(()) => {}
            Err(e) => match classify("stop the container", e) {
                RuntimeError::NotFound(_) => return Ok(None),
                other => return Err(other),
            },
        }
        let exit_code = self.inspect(container_id).await?.and_then(|i| i.exit_code);
        self.remove(container_id).await?;
        Ok(exit_code)
    }

    async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRef>, RuntimeError> {
        let mut label_filters = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={}", labels::NODE_ID, filter.node_id),
        ];
        if let Some(task_id) = &filter.task_id {
            label_filters.push(format!("{}={task_id}", labels::TASK_ID));
        }
        if let Some(attempt) = filter.attempt {
            label_filters.push(format!("{}={attempt}", labels::ATTEMPT));
        }
        let mut filters: HashMap<&str, Vec<String>> = HashMap::new();
        filters.insert("label", label_filters);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| classify("list containers", e))?;
        Ok(summaries.into_iter().filter_map(ref_from_summary).collect())
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        match self.docker.inspect_container(container_id, None).await {
            Ok(r) => Ok(Some(info_from_inspect(r))),
            Err(e) => match classify("inspect the container", e) {
                RuntimeError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    fn events(
        &self,
        node_id: &str,
        since_secs: i64,
    ) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let mut filters: HashMap<&str, Vec<String>> = HashMap::new();
        filters.insert("type", vec!["container".into()]);
        filters.insert("label", vec![format!("{}={node_id}", labels::NODE_ID)]);
        filters.insert("event", vec!["start".into(), "die".into(), "oom".into()]);
        let options = EventsOptionsBuilder::default()
            .since(&since_secs.to_string())
            .filters(&filters)
            .build();
        let docker = self.docker.clone();
        let ooms: Arc<Mutex<HashSet<String>>> = Arc::default();
        self.docker
            .events(Some(options))
            .then(move |item| {
                let docker = docker.clone();
                let ooms = Arc::clone(&ooms);
                async move { translate_event(&docker, &ooms, item).await }
            })
            .filter_map(futures::future::ready)
            .boxed()
    }

    fn logs(
        &self,
        container_id: &str,
        options: super::LogOptions,
    ) -> BoxStream<'static, Result<minkube::pb::LogChunk, RuntimeError>> {
        super::docker_logs::logs(&self.docker, container_id, options)
    }
}

/// One Docker event as a runtime event; `None` for events that only update
/// local knowledge (oom) or are not minkube's.
/// Whether the engine marks the container as killed for memory.
async fn marked_oom_killed(docker: &Docker, container_id: &str) -> bool {
    docker
        .inspect_container(container_id, None)
        .await
        .ok()
        .and_then(|r| r.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false)
}

async fn translate_event(
    docker: &Docker,
    ooms: &Mutex<HashSet<String>>,
    item: Result<EventMessage, DockerError>,
) -> Option<Result<RuntimeEvent, RuntimeError>> {
    let ev = match item {
        Ok(ev) => ev,
        Err(e) => return Some(Err(classify("stream events", e))),
    };
    let actor = ev.actor.clone().unwrap_or_default();
    let container_id = actor.id?;
    let attributes = actor.attributes.unwrap_or_default();
    let (task_id, attempt) = task_labels(Some(&attributes));
    if task_id.is_empty() {
        return None;
    }
    let kind = match ev.action.as_deref() {
        Some("start") => EventKind::Started,
        Some("oom") => {
            let mut set = ooms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if set.len() >= MAX_REMEMBERED_OOMS {
                set.clear();
            }
            set.insert(container_id);
            return None;
        }
        Some("die") => {
            let exit_code = attributes
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            let mut oom_killed = ooms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&container_id);
            if !oom_killed && exit_code != 0 {
                // The oom event is not ordered before die; the state is authoritative.
                oom_killed = marked_oom_killed(docker, &container_id).await;
                if !oom_killed && exit_code == SIGKILL_EXIT {
                    // The engine handles the kernel's OOM notice apart from
                    // the exit and may mark the container a moment after
                    // reporting the death: look once more, for kills only.
                    tokio::time::sleep(LATE_OOM_WAIT).await;
                    oom_killed = marked_oom_killed(docker, &container_id).await;
                }
            }
            EventKind::Died {
                exit_code,
                oom_killed,
            }
        }
        _ => return None,
    };
    Some(Ok(RuntimeEvent {
        container_id,
        task_id,
        attempt,
        kind,
        at: event_time(&ev),
    }))
}
