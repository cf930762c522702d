//! The broker of a `nats` run: three nats-servers in one JetStream cluster on loopback (the relays create
//! an R3 stream on it), each killed with SIGKILL and started again on the same port and store, so that
//! what JetStream acknowledged survives as it does in a real crash.

use anyhow::Context;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Members of the cluster: the smallest that keeps an R3 stream writable with one member down.
pub const MEMBERS: usize = 3;

/// How long a member may take from spawn to accepting connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The nats-server binary: `SMARTSCHEDULER_NATS_SERVER`, else `nats-server` on PATH, else Debian's path.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("SMARTSCHEDULER_NATS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

struct Member {
    port: u16,
    route_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three nats-servers named n0..n2, cluster `ss-chaos`.
pub struct NatsCluster {
    bin: PathBuf,
    routes: String,
    members: Mutex<Vec<Member>>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding a free port")?.local_addr()?.port())
}

impl NatsCluster {
    /// Starts the members (stores and logs under `dir`) and waits until each accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = binary();
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: `make chaos FAULTS=nats` installs Debian's nats-server",
            bin.display()
        );
        let mut members = Vec::with_capacity(MEMBERS);
        for i in 0..MEMBERS {
            let store = dir.join(format!("nats-{i}"));
            std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
            let log = dir.join(format!("nats-{i}.log"));
            members.push(Member { port: free_port()?, route_port: free_port()?, store, log, child: None });
        }
        let routes = members.iter().map(|m| format!("nats://127.0.0.1:{}", m.route_port)).collect::<Vec<_>>().join(",");
        let cluster = Self { bin, routes, members: Mutex::new(members) };
        for i in 0..MEMBERS {
            cluster.spawn(i)?;
        }
        for i in 0..MEMBERS {
            cluster.until_listening(i).await?;
        }
        Ok(cluster)
    }

    /// Every member's client URL, comma-separated (what `--broker` takes).
    pub fn urls(&self) -> String {
        let members = self.members.lock().unwrap();
        members.iter().map(|m| format!("nats://127.0.0.1:{}", m.port)).collect::<Vec<_>>().join(",")
    }

    /// The members that run, by index.
    pub fn up(&self) -> Vec<usize> {
        let members = self.members.lock().unwrap();
        (0..members.len()).filter(|&i| members[i].child.is_some()).collect()
    }

    /// SIGKILL of member `i`: no goodbye to its clients or its cluster peers.
    pub async fn kill(&self, i: usize) -> anyhow::Result<()> {
        let child = self.members.lock().unwrap()[i].child.take();
        if let Some(mut child) = child {
            child.start_kill().context("SIGKILL of a nats-server")?;
            child.wait().await.context("waiting for the killed nats-server")?;
        }
        Ok(())
    }

    /// Starts member `i` again on its port and store and waits until it accepts connections.
    pub async fn restart(&self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await?;
        self.spawn(i)?;
        self.until_listening(i).await
    }

    /// Kills every member (the end of a run).
    pub async fn stop_all(&self) {
        for i in 0..MEMBERS {
            let _ = self.kill(i).await;
        }
    }

    fn spawn(&self, i: usize) -> anyhow::Result<()> {
        let mut members = self.members.lock().unwrap();
        let member = &mut members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("opening {}", member.log.display()))?;
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &member.port.to_string(), "-js", "-sd"])
            .arg(&member.store)
            .args(["-n", &format!("n{i}"), "--cluster_name", "ss-chaos", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", member.route_port))
            .args(["--routes", &self.routes])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        member.child = Some(child);
        Ok(())
    }

    async fn until_listening(&self, i: usize) -> anyhow::Result<()> {
        let port = self.members.lock().unwrap()[i].port;
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        // nats-server offers no readiness signal but its port: poll the connect.
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "nats-server n{i} did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
