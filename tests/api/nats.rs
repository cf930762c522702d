//! A nats-server of the test's own (JetStream on, its own port and store), started from Debian's
//! `nats-server` (the Makefile installs it), so that a test can kill and restart it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The nats-server binary: `SMARTSCHEDULER_NATS_SERVER`, else `nats-server` on PATH, else Debian's path.
pub fn nats_server_binary() -> PathBuf {
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

/// One nats-server process with JetStream; killed (SIGKILL) when dropped.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// For a cluster member: its name, its route port and every member's route URL.
    cluster: Option<(String, u16, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port()
}

/// Three nats-servers in one JetStream cluster on loopback (R3 streams possible).
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let mut node = NatsServer {
                port: free_port(),
                store: tempfile::tempdir().expect("store dir"),
                child: None,
                cluster: Some((format!("n{i}"), *route_port, routes.clone())),
            };
            node.spawn();
            nodes.push(node);
        }
        for node in &mut nodes {
            node.until_listening().await;
        }
        Self { nodes }
    }

    /// Every member's client URL (what `--broker` takes).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut server =
            Self { port: free_port(), store: tempfile::tempdir().expect("store dir"), child: None, cluster: None };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: the server goes away without a goodbye, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (what JetStream acknowledged is still there).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.until_listening().await;
    }

    fn spawn(&mut self) {
        let mut command = Command::new(nats_server_binary());
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(self.store.path());
        if let Some((name, route_port, routes)) = &self.cluster {
            command.args(["-n", name, "--cluster_name", "ss-test", "--cluster"]);
            command.arg(format!("nats://127.0.0.1:{route_port}")).args(["--routes", routes]);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {:?} ({e}); `make test` installs nats-server", nats_server_binary())
        });
        self.child = Some(child);
    }

    async fn until_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // nats-server offers no readiness signal but its port: poll the connect.
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "nats-server did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
