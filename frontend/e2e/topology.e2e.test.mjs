// The production topologies of deploy/nginx and deploy/broker, tested: Debian's nginx with TLS and HTTP/2 in
// front of two `serve --dev` instances on one database, and a real headless Chromium (Debian's, driven by
// playwright-core) that signs in through the proxy, receives live events, and resumes on the
// surviving instance, with no event lost or applied twice, when the one holding its stream is killed.
// Then the broker topology: a three-node NATS JetStream cluster (R3 stream), two relays publishing to it,
// four edge nodes (`serve --broker ... --no-relay`) behind the same proxy, and the page keeps receiving,
// exactly once, while a nats-server and the edge node holding its stream are killed.
//
//   SMARTSCHEDULER_BIN=/path/to/smartscheduler \
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/<fresh empty db> \
//   npm run test:topology
//
// Needs `npm run build` first (the instances serve frontend/dist), nginx, nats-server, openssl and psql.
// Optional env: NGINX_PATH (default: nginx on PATH, else /usr/sbin/nginx), NATS_SERVER_PATH, CHROMIUM_PATH.
// Everything the proxy needs (certificate, configuration, logs, temp files) lives in a temp dir
// that is removed afterwards; nginx runs as one foreground process that the test stops.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const FRONTEND = resolve(here, '..');
const REPO = resolve(FRONTEND, '..');
const DIST = resolve(FRONTEND, 'dist');
const ARTIFACTS = resolve(FRONTEND, 'e2e-artifacts');
const TEMPLATE = resolve(REPO, 'deploy/nginx/smartscheduler.conf.template');
const BIN = process.env.SMARTSCHEDULER_BIN || resolve(REPO, 'target/debug/smartscheduler');
const DATABASE_URL = process.env.DATABASE_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Both instances must share one secret, so that the session cookie made by one is accepted by
// the other (with `serve --dev` and no secret each would make its own). Made fresh for the run.
const AUTH_SECRET = randomBytes(32).toString('hex');
const READY_TIMEOUT_MS = 60_000;
const UI_TIMEOUT_MS = 15_000;
/** Sets generated while the instance holding the stream is dead. */
const WHILE_DOWN = 5;

/** Finds a program on PATH (or in the sbin directories a non-root PATH often lacks). */
function which(name) {
  const dirs = [...(process.env.PATH || '').split(delimiter), '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  return null;
}

const NGINX = process.env.NGINX_PATH || which('nginx');
const NATS_SERVER = process.env.NATS_SERVER_PATH || which('nats-server');

function preflight() {
  const problems = [];
  if (!DATABASE_URL) problems.push('DATABASE_URL is not set: point it at a fresh, empty PostgreSQL database (the Makefile creates one).');
  if (!existsSync(BIN)) problems.push(`server binary not found at ${BIN}: build it (cargo build) or set SMARTSCHEDULER_BIN.`);
  if (!existsSync(resolve(DIST, 'index.html'))) problems.push(`${DIST}/index.html not found: run \`npm run build\` in frontend/ first.`);
  if (!existsSync(CHROMIUM)) problems.push(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH).`);
  if (!NGINX) problems.push('nginx not found: apt-get install -y nginx (or set NGINX_PATH).');
  if (!NATS_SERVER) problems.push('nats-server not found: apt-get install -y nats-server (or set NATS_SERVER_PATH).');
  if (!which('openssl')) problems.push('openssl not found: apt-get install -y openssl.');
  if (!which('psql')) problems.push('psql not found: apt-get install -y postgresql-client.');
  return problems;
}

/** @type {Set<import('node:child_process').ChildProcess>} */
const children = new Set();
/** @type {import('playwright-core').Browser | null} */
let browser = null;
/** Temp dirs of the tests (certificate, nginx, NATS stores), removed at the end. */
const workDirs = [];

function logStream(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return createWriteStream(resolve(ARTIFACTS, `${name}.log`), { flags: 'a' });
}

function serverEnv() {
  return { ...process.env, DATABASE_URL, SMARTSCHEDULER_AUTH_SECRET: AUTH_SECRET, RUST_LOG: process.env.RUST_LOG || 'info' };
}

/** Runs a program to completion; throws with its output when it fails. Returns stdout. */
function runSync(cmd, args, what, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...options });
  if (r.error) throw new Error(`${what}: cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status ?? r.signal}): ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** One SQL query through psql; rows as arrays of text fields. */
function sql(query) {
  const out = runSync('psql', [DATABASE_URL, '-X', '-At', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-c', query], 'psql');
  return out.split('\n').filter((l) => l !== '').map((l) => l.split('\t'));
}

function runCli(args) {
  const log = logStream('topology-cli');
  const r = spawnSync(BIN, args, { env: serverEnv(), encoding: 'utf8' });
  log.end(`${r.stdout ?? ''}${r.stderr ?? ''}`);
  if (r.status !== 0) throw new Error(`\`smartscheduler ${args.join(' ')}\` failed (exit ${r.status ?? r.signal}): ${r.stderr}`);
}

async function freePort() {
  return new Promise((resolvePromise, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (srv.address());
      srv.close(() => resolvePromise(port));
    });
  });
}

/** Spawns a long-running child whose output goes to e2e-artifacts/<name>.log; tracks its exit. */
function spawnLogged(name, cmd, args, env) {
  const log = logStream(name);
  log.write(`\n=== ${new Date().toISOString()} ${cmd} ${args.join(' ')}\n`);
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const proc = { child, name, exited: /** @type {string | number | null} */ (null) };
  child.on('exit', (code, signal) => {
    proc.exited = code ?? signal;
    children.delete(child);
  });
  child.on('error', (err) => {
    proc.exited = err.message;
  });
  return proc;
}

/**
 * Waits until `probe()` answers true, failing early if the process exits. Polling is the one way:
 * neither `serve` nor nginx offers another readiness signal.
 */
async function waitReady(proc, probe) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (proc.exited !== null) throw new Error(`${proc.name} exited (${proc.exited}) before it was ready; see e2e-artifacts/${proc.name}.log`);
    if (await probe().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${proc.name} not ready within ${READY_TIMEOUT_MS} ms; see e2e-artifacts/${proc.name}.log`);
}

async function startServe(name, extraArgs = []) {
  const port = await freePort();
  // --trust-proxy: as deploy/README.md says, for the instances behind the proxy of the template.
  const args = ['serve', '--dev', '--trust-proxy', '--addr', `127.0.0.1:${port}`, '--static-dir', DIST, ...extraArgs];
  const proc = spawnLogged(name, BIN, args, serverEnv());
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, async () => (await fetch(`${base}/readyz`)).status === 200);
  // The same object: `exited` is updated in place when the process exits.
  return Object.assign(proc, { port, base });
}

/** Stops a child (`signal`, then SIGKILL after a grace period) and waits for its exit. */
function stop(child, signal = 'SIGTERM', graceMs = 10_000) {
  return new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolvePromise(child.exitCode ?? child.signalCode);
      return;
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      resolvePromise(code ?? sig);
    });
    child.kill(signal);
  });
}

/** Waits until something accepts TCP connections on 127.0.0.1:`port` (nats-server has no other signal). */
async function listening(port) {
  return new Promise((res) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      res(true);
    });
    socket.on('error', () => res(false));
  });
}

/**
 * Three nats-servers in one JetStream cluster on loopback ports (the shape of deploy/broker/nats-cluster.sh),
 * each with its store in `dir`. Returns the members; `restart(i)` starts a killed one on its port and store.
 */
async function startNatsCluster(dir) {
  const members = [];
  for (let i = 0; i < 3; i++) members.push({ name: `n${i}`, port: await freePort(), routePort: await freePort() });
  const routes = members.map((m) => `nats://127.0.0.1:${m.routePort}`).join(',');
  const start = async (m) => {
    const store = join(dir, `nats-${m.name}`);
    mkdirSync(store, { recursive: true });
    const args = ['-a', '127.0.0.1', '-p', String(m.port), '-js', '-sd', store, '-n', m.name,
      '--cluster_name', 'ss-topology', '--cluster', `nats://127.0.0.1:${m.routePort}`, '--routes', routes];
    m.proc = spawnLogged(`broker-nats-${m.name}`, NATS_SERVER, args, process.env);
    await waitReady(m.proc, () => listening(m.port));
  };
  await Promise.all(members.map(start));
  return { members, urls: members.map((m) => `nats://127.0.0.1:${m.port}`).join(','), restart: (i) => start(members[i]) };
}

/** `smartscheduler relay --broker URLS --broker-replicas 3`: outbox -> event_log -> JetStream (R3). */
function startRelay(name, urls) {
  return spawnLogged(name, BIN, ['relay', '--broker', urls, '--broker-replicas', '3'], serverEnv());
}

/** Stops every child still running (nginx, instances, relays, nats-servers), so the next test starts alone. */
async function stopAll() {
  await Promise.all([...children].map((c) => stop(c, 'SIGTERM', 5_000)));
}

process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/** A self-signed certificate for 127.0.0.1 and localhost; returns its paths and SPKI hash. */
function makeCertificate(dir) {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  runSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert],
    'openssl req',
  );
  // The base64 SHA-256 of the public key: Chromium trusts exactly this key, and nothing else.
  const pubDer = runSync('openssl', ['x509', '-in', cert, '-pubkey', '-noout'], 'openssl x509');
  const der = spawnSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pubDer });
  if (der.status !== 0) throw new Error(`openssl pkey failed: ${der.stderr}`);
  const spki = spawnSync('openssl', ['dgst', '-sha256', '-binary'], { input: der.stdout });
  if (spki.status !== 0) throw new Error(`openssl dgst failed: ${spki.stderr}`);
  return { cert, key, spki: spki.stdout.toString('base64') };
}

/**
 * Writes deploy/nginx's template with this run's ports and paths, wrapped in a main configuration
 * of the test's own (pid, logs and temp paths in `dir`), checks it with `nginx -t`, and starts nginx.
 */
async function startNginx(dir, { port, upstreams, cert, key }) {
  const site = readFileSync(TEMPLATE, 'utf8')
    .replaceAll('@LISTEN@', `127.0.0.1:${port}`)
    .replaceAll('@SERVER_NAME@', 'localhost')
    // The template names two instances; a topology of more gets one `server` line per instance.
    .replace(/^(\s*server )@SERVE_A@(.*)$/m, (_, head, tail) => upstreams.map((u) => `${head}${u}${tail}`).join('\n'))
    .replace(/^\s*server @SERVE_B@.*\n/m, '')
    .replaceAll('@CERT@', cert)
    .replaceAll('@KEY@', key);
  const unfilled = site.split('\n').filter((l) => !l.trim().startsWith('#') && /@[A-Z_]+@/.test(l));
  assert.deepEqual(unfilled, [], 'a placeholder of the template was not filled');
  writeFileSync(join(dir, 'smartscheduler.conf'), site);
  const temp = (what) => `${what}_temp_path ${join(dir, `${what}_temp`)};`;
  writeFileSync(
    join(dir, 'nginx.conf'),
    [
      // One foreground process: the test is its parent and stops it; with no master/worker
      // split no worker can be left behind, and no user switch happens when run as root.
      'daemon off;',
      'master_process off;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} info;`,
      'events { worker_connections 1024; }',
      'http {',
      `  log_format upstream '$remote_addr "$request" $status $server_protocol upstream=$upstream_addr ($upstream_status) $request_time s';`,
      `  access_log ${join(dir, 'access.log')} upstream;`,
      `  ${temp('client_body')} ${temp('proxy')} ${temp('fastcgi')} ${temp('uwsgi')} ${temp('scgi')}`,
      `  include ${join(dir, 'smartscheduler.conf')};`,
      '}',
      '',
    ].join('\n'),
  );
  const args = ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')];
  runSync(NGINX, [...args, '-t', '-q'], 'nginx -t (the configuration check)');
  const proc = spawnLogged('nginx', NGINX, args, process.env);
  const caCert = readFileSync(cert);
  // Ready when /readyz answers 200 through TLS (certificate verified against our own) and the proxy.
  await waitReady(
    proc,
    () =>
      new Promise((res, rej) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/readyz', ca: caCert, servername: 'localhost' }, (r) => {
          r.resume();
          res(r.statusCode === 200);
        });
        req.on('error', rej);
        req.end();
      }),
  );
  return proc;
}

/** smartscheduler_sse_connections of an instance, read directly (not through the proxy). */
async function sseConnections(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('smartscheduler_sse_connections'));
  assert.ok(line, 'no smartscheduler_sse_connections in /metrics');
  return Number(line.trim().split(/\s+/).pop());
}

/** Waits until exactly one stream is open across the instances; returns the index of its holder. */
async function streamHolder(servers, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let counts = [];
  // A poll of the instances' own gauges: they offer no event for it.
  while (Date.now() < deadline) {
    counts = await Promise.all(servers.map((s) => (s.exited === null ? sseConnections(s.base) : 0)));
    if (counts.reduce((a, b) => a + b, 0) === 1) return counts.indexOf(1);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`expected one event stream across the instances, gauges read ${JSON.stringify(counts)}`);
}

/** Record every SSE message the page receives (test-side wrapper, the app is unaware). */
function recordSseEvents() {
  const Native = window.EventSource;
  window.__sse = [];
  class Recording extends Native {
    constructor(url, init) {
      super(url, init);
      for (const type of ['RecommendationReady', 'reset', 'auth-expired']) {
        this.addEventListener(type, (ev) => window.__sse.push({ type, data: ev.data, id: ev.lastEventId }));
      }
    }
  }
  window.EventSource = Recording;
}

/** Record, in the page, every event the app applied (after its de-duplication) and its status. */
async function recordApplied(page) {
  await page.waitForFunction(() => window.__smartschedulerRealtime !== undefined, null, { timeout: UI_TIMEOUT_MS });
  await page.evaluate(() => {
    window.__applied = [];
    window.__statusLog = [];
    const rt = window.__smartschedulerRealtime;
    rt.on('RecommendationReady', (ev) =>
      window.__applied.push({ eventId: ev.eventId, setId: ev.summary.recommendationSetId, at: Date.now() }),
    );
    rt.onStatus((status) => window.__statusLog.push({ status, at: Date.now() }));
  });
}

async function waitStatus(page, status, timeout = UI_TIMEOUT_MS) {
  await page.waitForFunction(
    (s) => document.querySelector('[data-testid="connection-status"]')?.textContent === s,
    status,
    { timeout },
  );
}

/**
 * POST /api/jobs/{id}/recommendations from inside the page (its cookie, through the proxy).
 * Returns the set and when the request was sent, by the page's clock.
 */
async function generateFromPage(page, jobId) {
  const res = await page.evaluate(async (id) => {
    const sentAt = Date.now();
    const r = await fetch(`/api/jobs/${id}/recommendations`, { method: 'POST' });
    return { status: r.status, body: await r.text(), sentAt, answeredAt: Date.now() };
  }, jobId);
  assert.equal(res.status, 201, `generate for ${jobId}: ${res.status} ${res.body}`);
  return { set: JSON.parse(res.body), sentAt: res.sentAt, answeredAt: res.answeredAt };
}

/** Waits until the page applied the event of `setId`; returns when (page clock). */
async function waitApplied(page, setId, timeout) {
  const handle = await page.waitForFunction(
    (id) => window.__applied.find((a) => a.setId === id)?.at ?? false,
    setId,
    { timeout },
  );
  return handle.jsonValue();
}

/**
 * An event stream read by Node straight from an instance (no proxy, no TLS, no browser), signed in
 * with the dev endpoint: when each event arrived there, by eventId, to compare with the page.
 */
async function directStream(base, dispatcherId) {
  const res = await fetch(`${base}/api/dev/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ dispatcherId }),
  });
  assert.equal(res.status, 200, `POST ${base}/api/dev/session: ${res.status}`);
  const cookie = res.headers.getSetCookie().map((c) => c.split(';')[0]).find((c) => c.startsWith('ss_session='));
  const abort = new AbortController();
  const stream = await fetch(`${base}/api/events`, { headers: { Cookie: cookie }, signal: abort.signal });
  assert.equal(stream.status, 200, `direct GET /api/events: ${stream.status}`);
  /** @type {Map<string, number>} */
  const arrivals = new Map();
  const reading = (async () => {
    const decoder = new TextDecoder();
    let buffered = '';
    for await (const chunk of stream.body) {
      const now = Date.now();
      buffered += decoder.decode(chunk, { stream: true });
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        if (!line.startsWith('data: {')) continue;
        const { eventId } = JSON.parse(line.slice('data: '.length));
        if (eventId && !arrivals.has(eventId)) arrivals.set(eventId, now);
      }
    }
  })().catch(() => {});
  return {
    arrivals,
    close: async () => {
      abort.abort();
      await reading;
    },
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const problems = preflight();
const skip = problems.length > 0 ? 'preflight failed (see above)' : false;

before(() => {
  if (problems.length > 0) return;
  runCli(['migrate']);
  runCli(['seed', '--demo']);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  // nginx, the instances and the nats-servers still running (the killed ones are gone already).
  await Promise.all([...children].map((c) => stop(c, 'SIGTERM', 5_000)));
  for (const [i, dir] of workDirs.entries()) {
    // The pid file is gone once nginx exited cleanly; a leftover one names a process still there.
    const pidFile = join(dir, 'nginx.pid');
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        /* gone */
      }
      if (alive) {
        process.kill(pid, 'SIGKILL');
        assert.fail(`nginx (pid ${pid}) was still running after the test and has been killed`);
      }
    }
    const prefix = i === 0 ? 'nginx' : `nginx-${i}`;
    for (const f of ['error.log', 'access.log']) {
      if (existsSync(join(dir, f))) copyFileSync(join(dir, f), resolve(ARTIFACTS, `${prefix}-${f}`));
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A temp dir of this run, removed by `after`. */
function newWorkDir(label) {
  const dir = mkdtempSync(join(tmpdir(), `ss-${label}-`));
  workDirs.push(dir);
  return dir;
}

let certificate = null;
/** The run's self-signed certificate (one for every test: the browser trusts exactly its key). */
function testCertificate() {
  if (!certificate) certificate = makeCertificate(newWorkDir('tls'));
  return certificate;
}

/** Headless Chromium (one per file) that trusts exactly the test's certificate; a fresh context and page. */
async function openPage(tls) {
  if (!browser) {
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Trust the test's self-signed certificate (by its public key) and nothing else.
        `--ignore-certificate-errors-spki-list=${tls.spki}`,
      ],
    });
  }
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error('[pageerror]', err));
  await page.addInitScript(recordSseEvents);
  return { context, page };
}

test('preflight: server binary, database, build, browser, nginx, nats-server, openssl and psql are available', () => {
  assert.deepEqual(problems, [], `the topology test cannot run:\n  - ${problems.join('\n  - ')}`);
});

test(
  'TLS + HTTP/2 through nginx to two instances: live events, and a resume on the survivor with no loss when one is killed',
  { skip, timeout: 180_000 },
  async () => {
    const tStart = Date.now();
    mkdirSync(ARTIFACTS, { recursive: true });
    const workDir = newWorkDir('topology');
    const tls = testCertificate();

    const servers = await Promise.all([startServe('topology-serve-a'), startServe('topology-serve-b')]);
    const proxyPort = await freePort();
    await startNginx(workDir, {
      port: proxyPort,
      upstreams: servers.map((s) => `127.0.0.1:${s.port}`),
      cert: tls.cert,
      key: tls.key,
    });
    const origin = `https://127.0.0.1:${proxyPort}`;

    const { context, page } = await openPage(tls);

    // The protocol of every event-stream response, as Chromium's network stack saw it.
    const streams = [];
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    cdp.on('Network.responseReceived', ({ response }) => {
      if (new URL(response.url).pathname === '/api/events') streams.push({ protocol: response.protocol, status: response.status });
    });

    // --- sign in through the proxy, over HTTP/2 ---
    const documentResponse = await page.goto(origin);
    const signInResponse = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/dev/session');
    await page.getByTestId('signin-alice').click();
    await page.getByTestId('whoami').waitFor({ timeout: UI_TIMEOUT_MS });
    // Over https the session cookie is Secure under the __Host- prefix (the proxy says https, the
    // instances trust it), and the console's security headers come through the proxy.
    const setCookie = (await (await signInResponse).headerValue('set-cookie')) ?? '';
    assert.match(setCookie, /^__Host-ss_session=/, `Set-Cookie over https: ${setCookie}`);
    for (const attribute of ['Secure', 'HttpOnly', 'Path=/', 'SameSite=Lax']) {
      assert.ok(setCookie.split(/;\s*/).includes(attribute), `Set-Cookie over https lacks ${attribute}: ${setCookie}`);
    }
    const cookies = await context.cookies(origin);
    assert.deepEqual(
      cookies.map((c) => [c.name, c.secure, c.httpOnly, c.path]),
      [['__Host-ss_session', true, true, '/']],
      `the browser's cookies: ${JSON.stringify(cookies)}`,
    );
    const docHeaders = await documentResponse.allHeaders();
    assert.match(docHeaders['content-security-policy'] ?? '', /frame-ancestors 'none'/, 'no CSP through the proxy');
    assert.equal(docHeaders['x-content-type-options'], 'nosniff');
    assert.equal(docHeaders['content-type'], 'text/html; charset=utf-8');
    await waitStatus(page, 'live');
    await recordApplied(page);
    assert.equal(await page.evaluate(() => window.isSecureContext), true, 'the page is not a secure context');
    const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(nav, 'h2', `the page was loaded over ${nav}, not HTTP/2`);
    assert.ok(streams.length >= 1, 'no /api/events response seen');
    assert.deepEqual(
      streams.map((s) => [s.protocol, s.status]),
      streams.map(() => ['h2', 200]),
      `event streams: ${JSON.stringify(streams)}`,
    );

    const row = page.locator('[data-testid^="job-row-"]').first();
    await row.waitFor({ timeout: UI_TIMEOUT_MS });
    const jobId = (await row.getAttribute('data-testid')).slice('job-row-'.length);
    await row.click();
    await page.waitForSelector('[data-testid="sheet-row"], [data-testid="sheet-empty"]', { timeout: UI_TIMEOUT_MS });
    const [[seqBefore]] = sql('SELECT coalesce(max(seq), 0) FROM event_log');

    // --- the first event, live through the proxy; its latency by the page's own clock (the
    // machine's clock, as Node's), next to when the same event reached a reader of the instance
    // that serves the page's stream, read directly ---
    const servedBy = await streamHolder(servers);
    const direct = await directStream(servers[servedBy].base, 'alice');
    const first = await generateFromPage(page, jobId);
    const firstAt = await waitApplied(page, first.set.recommendationSetId, 5_000);
    const apiProtocols = await page.evaluate(() =>
      [...new Set(performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/')).map((e) => e.nextHopProtocol))],
    );
    assert.deepEqual(apiProtocols, ['h2'], `API calls went over ${apiProtocols}`);
    const generated = [first];
    const latencies = [firstAt - first.sentAt];
    for (let i = 0; i < 5; i++) {
      const g = await generateFromPage(page, jobId);
      latencies.push((await waitApplied(page, g.set.recommendationSetId, 5_000)) - g.sentAt);
      generated.push(g);
    }
    const applied6 = await page.evaluate(() => window.__applied);
    await direct.close();
    const directLatencies = generated.map((g) => {
      const ev = applied6.find((a) => a.setId === g.set.recommendationSetId);
      assert.ok(direct.arrivals.has(ev.eventId), `the direct reader never got event ${ev.eventId}`);
      return direct.arrivals.get(ev.eventId) - g.sentAt;
    });
    console.log(
      `# through nginx (TLS, HTTP/2): the first event reached the page ${latencies[0]} ms after its POST was sent ` +
        `(${firstAt - first.answeredAt} ms after the 201; a direct reader of that instance had it after ${directLatencies[0]} ms); ` +
        `the next 5: median ${median(latencies.slice(1))} ms, max ${Math.max(...latencies.slice(1))} ms ` +
        `(direct: median ${median(directLatencies.slice(1))} ms)`,
    );

    // --- kill the instance that holds the stream; generate while it is down ---
    const holder = await streamHolder(servers);
    assert.equal(holder, servedBy, "the page's stream moved to the other instance before the kill");
    const survivor = 1 - holder;
    const tKill = Date.now();
    assert.equal(await stop(servers[holder].child, 'SIGKILL'), 'SIGKILL');
    const whileDown = [];
    for (let i = 0; i < WHILE_DOWN; i++) whileDown.push(await generateFromPage(page, jobId));
    generated.push(...whileDown);

    // The page resumes on the survivor, and every set made meanwhile arrives.
    for (const g of whileDown) await waitApplied(page, g.set.recommendationSetId, 30_000);
    await waitStatus(page, 'live', 15_000);
    const resumedAt = Date.now();
    assert.equal(await streamHolder(servers), survivor, 'the stream is not on the surviving instance');
    const statusLog = await page.evaluate(() => window.__statusLog);
    const back = statusLog.find((s) => s.at >= tKill && s.status === 'live');
    console.log(
      `# instance ${'AB'[holder]} SIGKILLed: ${WHILE_DOWN} sets generated through the proxy meanwhile; ` +
        `the page was live again on ${'AB'[survivor]} ${back ? back.at - tKill : '?'} ms later and had every set after ${resumedAt - tKill} ms`,
    );
    assert.ok(streams.length >= 2, `the stream was not reopened: ${JSON.stringify(streams)}`);
    assert.ok(streams.every((s) => s.protocol === 'h2'), `event streams: ${JSON.stringify(streams)}`);

    // One more, live on the survivor.
    const last = await generateFromPage(page, jobId);
    await waitApplied(page, last.set.recommendationSetId, 5_000);
    generated.push(last);

    // --- exactly once: every event the log holds for alice's groups since she connected ---
    const logged = sql(
      `SELECT event_id, payload->'summary'->>'recommendationSetId' FROM event_log
       WHERE seq > ${Number(seqBefore)} AND groups && ARRAY['region:north'] ORDER BY seq`,
    );
    const applied = await page.evaluate(() => window.__applied);
    const appliedIds = applied.map((a) => a.eventId);
    assert.equal(new Set(appliedIds).size, appliedIds.length, `an event was applied twice: ${JSON.stringify(appliedIds)}`);
    assert.deepEqual([...appliedIds].sort(), logged.map(([id]) => id).sort(), 'the page did not apply exactly the events of the log');
    assert.deepEqual(
      generated.map((g) => g.set.recommendationSetId).sort(),
      logged.map(([, set]) => set).sort(),
      'the log does not hold exactly the sets generated',
    );
    const received = (await page.evaluate(() => window.__sse)).filter((e) => e.type === 'RecommendationReady').length;
    console.log(
      `# exactly once: ${appliedIds.length} events applied = ${logged.length} in the log (${received} received, repeats dropped by eventId); ` +
        `test body took ${((Date.now() - tStart) / 1000).toFixed(1)} s`,
    );
    await page.screenshot({ path: resolve(ARTIFACTS, 'topology.png') });
    await context.close();
    await stopAll();
  },
);

/** The page's sign-in through the proxy as alice, live, recording; the first job row selected. */
async function signInAndSelectJob(page, origin) {
  await page.goto(origin);
  await page.getByTestId('signin-alice').click();
  await page.getByTestId('whoami').waitFor({ timeout: UI_TIMEOUT_MS });
  await waitStatus(page, 'live');
  await recordApplied(page);
  const row = page.locator('[data-testid^="job-row-"]').first();
  await row.waitFor({ timeout: UI_TIMEOUT_MS });
  const jobId = (await row.getAttribute('data-testid')).slice('job-row-'.length);
  await row.click();
  await page.waitForSelector('[data-testid="sheet-row"], [data-testid="sheet-empty"]', { timeout: UI_TIMEOUT_MS });
  return jobId;
}

/** Generates `n` sets from the page; returns them (the page need not have applied them yet). */
async function generateMany(page, jobId, n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await generateFromPage(page, jobId));
  return out;
}

test(
  'NATS JetStream (3 nodes, R3) between 2 relays and 4 edge nodes behind nginx: the page keeps receiving, exactly once, while a nats-server and its edge node are killed',
  { skip, timeout: 240_000 },
  async () => {
    const tStart = Date.now();
    const workDir = newWorkDir('broker');
    const tls = testCertificate();
    const nats = await startNatsCluster(workDir);
    const relays = [startRelay('broker-relay-1', nats.urls), startRelay('broker-relay-2', nats.urls)];
    // Edge nodes are ready once their one JetStream consumer follows the stream, which the relays create.
    const edges = await Promise.all(
      [1, 2, 3, 4].map((i) => startServe(`broker-edge-${i}`, ['--no-relay', '--broker', nats.urls])),
    );
    const proxyPort = await freePort();
    await startNginx(workDir, { port: proxyPort, upstreams: edges.map((e) => `127.0.0.1:${e.port}`), cert: tls.cert, key: tls.key });
    const origin = `https://127.0.0.1:${proxyPort}`;
    const { context, page } = await openPage(tls);
    const jobId = await signInAndSelectJob(page, origin);
    const [[seqBefore]] = sql('SELECT coalesce(max(seq), 0) FROM event_log');
    const generated = [];

    // Live through the broker.
    const live = await generateMany(page, jobId, 3);
    for (const g of live) await waitApplied(page, g.set.recommendationSetId, 10_000);
    generated.push(...live);

    // kill -9 of one nats-server: the R3 stream keeps its quorum, relays and edge nodes move to the others.
    const tNatsKill = Date.now();
    assert.equal(await stop(nats.members[0].proc.child, 'SIGKILL'), 'SIGKILL');
    const afterNatsKill = await generateMany(page, jobId, 3);
    for (const g of afterNatsKill) await waitApplied(page, g.set.recommendationSetId, 30_000);
    generated.push(...afterNatsKill);
    const natsKillMs = Date.now() - tNatsKill;

    // kill -9 of the edge node that holds the page's stream: the page resumes on another one from its position.
    const holder = await streamHolder(edges);
    const tEdgeKill = Date.now();
    assert.equal(await stop(edges[holder].child, 'SIGKILL'), 'SIGKILL');
    const afterEdgeKill = await generateMany(page, jobId, 3);
    for (const g of afterEdgeKill) await waitApplied(page, g.set.recommendationSetId, 30_000);
    await waitStatus(page, 'live', 15_000);
    generated.push(...afterEdgeKill);
    const edgeKillMs = Date.now() - tEdgeKill;
    const newHolder = await streamHolder(edges);
    assert.notEqual(newHolder, holder, 'the stream is still counted on the killed edge node');

    // The killed nats-server comes back and catches up; one more event, live.
    await nats.restart(0);
    const last = await generateMany(page, jobId, 1);
    await waitApplied(page, last[0].set.recommendationSetId, 10_000);
    generated.push(...last);

    for (const r of relays) assert.equal(r.exited, null, `${r.name} exited (${r.exited}); see e2e-artifacts/${r.name}.log`);
    const logged = sql(
      `SELECT event_id, payload->'summary'->>'recommendationSetId' FROM event_log
       WHERE seq > ${Number(seqBefore)} AND groups && ARRAY['region:north'] ORDER BY seq`,
    );
    const applied = await page.evaluate(() => window.__applied);
    const appliedIds = applied.map((a) => a.eventId);
    assert.equal(new Set(appliedIds).size, appliedIds.length, `an event was applied twice: ${JSON.stringify(appliedIds)}`);
    assert.deepEqual(appliedIds, logged.map(([id]) => id), 'the page did not apply exactly the events of the log, in order');
    assert.deepEqual(
      generated.map((g) => g.set.recommendationSetId).sort(),
      logged.map(([, set]) => set).sort(),
      'the log does not hold exactly the sets generated',
    );
    const reset = (await page.evaluate(() => window.__sse)).filter((e) => e.type === 'reset');
    assert.deepEqual(reset, [], 'the page was told to reset');
    console.log(
      `# broker topology: ${appliedIds.length} events applied exactly once and in order through 3 NATS nodes, 2 relays, ` +
        `4 edge nodes; a nats-server SIGKILLed: the next 3 applied after ${natsKillMs} ms; the edge node holding the ` +
        `stream SIGKILLed: the page was live on edge ${newHolder + 1} with the next 3 after ${edgeKillMs} ms; ` +
        `test body took ${((Date.now() - tStart) / 1000).toFixed(1)} s`,
    );
    await page.screenshot({ path: resolve(ARTIFACTS, 'topology-broker.png') });
    await context.close();
  },
);
