//! The `serve` processes under test: started as children on ports the kernel picks, killed with SIGKILL
//! and started again. Clients look up the address of a running instance here on every reconnect.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long an instance may take from spawn to `/readyz` 200 (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What every instance is started with.
pub struct ClusterConfig {
    pub bin: PathBuf,
    pub database_url: String,
    pub auth_secret: String,
    pub log_dir: PathBuf,
    /// A `nats` run: the NATS URLs (comma-separated) every instance is started with (`--broker`).
    pub broker: Option<String>,
    /// In a `nats` run, instances `0..relays` run a relay (and publish to JetStream); the others are edge
    /// nodes (`--no-relay`) fed by JetStream alone.
    pub relays: usize,
}

struct Instance {
    child: Option<Child>,
    /// `host:port` while the instance runs and is ready; None while it is down.
    addr: Option<String>,
    starts: u32,
}

/// N instances of `smartscheduler serve` on one database.
pub struct Cluster {
    config: ClusterConfig,
    instances: Mutex<Vec<Instance>>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, n: usize) -> Arc<Self> {
        let instances = (0..n).map(|_| Instance { child: None, addr: None, starts: 0 }).collect();
        Arc::new(Self { config, instances: Mutex::new(instances) })
    }

    pub fn len(&self) -> usize {
        self.instances.lock().unwrap().len()
    }

    /// The addresses of the instances that are up, by index.
    pub fn up(&self) -> Vec<(usize, String)> {
        let instances = self.instances.lock().unwrap();
        instances.iter().enumerate().filter_map(|(i, inst)| inst.addr.clone().map(|a| (i, a))).collect()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.instances.lock().unwrap()[i].addr.is_some()
    }

    /// Starts instance `i` and waits until it prints its address and answers `/readyz` with 200.
    pub async fn start(&self, i: usize) -> anyhow::Result<()> {
        let starts = {
            let mut instances = self.instances.lock().unwrap();
            anyhow::ensure!(instances[i].child.is_none(), "instance {i} is already running");
            instances[i].starts += 1;
            instances[i].starts
        };
        let log_path = self.config.log_dir.join(format!("instance-{i}.log"));
        let log = open_log(&log_path, i, starts)?;
        let mut command = Command::new(&self.config.bin);
        // Port 0: the kernel picks a free one and `serve` prints it; a restart may get another.
        command.args(["serve", "--addr", "127.0.0.1:0"]);
        if let Some(urls) = &self.config.broker {
            command.args(["--broker", urls, "--broker-replicas", "3"]);
            if i >= self.config.relays {
                command.arg("--no-relay");
            }
        }
        let mut child = command
            // The fault suite's clients share few dispatchers: the per-dispatcher limit is not under test.
            .env("SMARTSCHEDULER_MAX_STREAMS_PER_DISPATCHER", "1000000")
            .env("DATABASE_URL", &self.config.database_url)
            .env("SMARTSCHEDULER_AUTH_SECRET", &self.config.auth_secret)
            .env("RUST_LOG", std::env::var("CHAOS_SERVER_LOG").unwrap_or_else(|_| "info".to_owned()))
            .env_remove("SMARTSCHEDULER_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.config.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let addr = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .with_context(|| format!("instance {i} did not print its address within {START_TIMEOUT:?}"))?
                .context("reading the instance's stdout")?
                .with_context(|| format!("instance {i} exited before listening (see {})", log_path.display()))?;
            if let Some(addr) = line.strip_prefix("smartscheduler listening on http://") {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stdout so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        {
            let mut instances = self.instances.lock().unwrap();
            instances[i].child = Some(child);
        }
        loop {
            if http_status(&addr, "/readyz").await == Some(200) {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "instance {i} at {addr} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.instances.lock().unwrap()[i].addr = Some(addr);
        Ok(())
    }

    /// SIGKILL: the process gets no chance to end its streams or finish its relay batch.
    pub async fn kill(&self, i: usize) -> anyhow::Result<()> {
        let child = {
            let mut instances = self.instances.lock().unwrap();
            instances[i].addr = None;
            instances[i].child.take()
        };
        if let Some(mut child) = child {
            child.start_kill().context("SIGKILL")?;
            child.wait().await.context("waiting for the killed instance")?;
        }
        Ok(())
    }

    /// SIGSTOP for `pause`, then SIGCONT: the process holds its connections but does nothing, so its
    /// JetStream consumer, its relay or its clients' streams fall behind and must catch up. Not offered to
    /// new clients meanwhile (a browser would time out on it).
    pub async fn stall(&self, i: usize, pause: Duration) -> anyhow::Result<()> {
        let (pid, addr) = {
            let mut instances = self.instances.lock().unwrap();
            let pid = instances[i].child.as_ref().and_then(Child::id);
            (pid, instances[i].addr.take())
        };
        let Some(pid) = pid else { return Ok(()) };
        signal(pid, "-STOP").await?;
        tokio::time::sleep(pause).await;
        signal(pid, "-CONT").await?;
        self.instances.lock().unwrap()[i].addr = addr;
        Ok(())
    }

    /// Whether every instance that was started is still running (one that exited by itself is a finding).
    pub fn exited_by_themselves(&self) -> Vec<(usize, String)> {
        let mut instances = self.instances.lock().unwrap();
        let mut exited = Vec::new();
        for (i, inst) in instances.iter_mut().enumerate() {
            if let Some(child) = inst.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push((i, status.to_string()));
            }
        }
        exited
    }

    /// Kills every instance (the end of a run).
    pub async fn stop_all(&self) {
        for i in 0..self.len() {
            let _ = self.kill(i).await;
        }
    }
}

/// `kill <signal> <pid>` (the harness has no signal library; this is the portable way).
async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().await.context("running kill")?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed ({status})");
    Ok(())
}

fn open_log(path: &Path, i: usize, starts: u32) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "=== chaos: instance {i}, start #{starts} ===")?;
    Ok(file)
}

/// The status code of `GET path` (HTTP/1.1, connection closed after), or None if it could not be read.
pub async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(256);
        while !head.windows(2).any(|w| w == b"\r\n") {
            if stream.read_buf(&mut head).await.ok()? == 0 {
                return None;
            }
        }
        let line = String::from_utf8_lossy(&head);
        line.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await.ok().flatten()
}
