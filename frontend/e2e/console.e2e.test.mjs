// End-to-end test of the dispatch console against the REAL server, in headless
// Chromium (Debian's /usr/bin/chromium driven by playwright-core).
//
//   SMARTSCHEDULER_BIN=/path/to/smartscheduler \
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/<fresh empty db> \
//   npm run test:e2e
//
// Needs `npm run build` first (it serves frontend/dist). Optional env:
// CHROMIUM_PATH (default /usr/bin/chromium), E2E_HEADED=1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const FRONTEND = resolve(here, '..');
const DIST = resolve(FRONTEND, 'dist');
const ARTIFACTS = resolve(FRONTEND, 'e2e-artifacts');
const BIN = process.env.SMARTSCHEDULER_BIN || resolve(FRONTEND, '../target/debug/smartscheduler');
const DATABASE_URL = process.env.DATABASE_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// All server processes must share one secret: with `serve --dev` and no secret each
// process would make its own, and a session cookie from one would not work on the
// other (nor on the same server after its restart).
const AUTH_SECRET =
  process.env.SMARTSCHEDULER_AUTH_SECRET || 'e2e-only-secret-0123456789abcdef0123456789abcdef';

const SCHEMA = resolve(FRONTEND, '../schemas/recommendation-ready.v1.schema.json');
const READY_TIMEOUT_MS = 60_000;
const UI_TIMEOUT_MS = 15_000;

/** @type {Set<import('node:child_process').ChildProcess>} */
const children = new Set();
/** @type {import('playwright-core').Browser | null} */
let browser = null;

function preflight() {
  const problems = [];
  if (!DATABASE_URL) {
    problems.push('DATABASE_URL is not set: point it at a fresh, empty PostgreSQL database (the Makefile creates one).');
  }
  if (!existsSync(BIN)) {
    problems.push(
      `server binary not found at ${BIN}: build it (cargo build) or set SMARTSCHEDULER_BIN to its path.`,
    );
  }
  if (!existsSync(resolve(DIST, 'index.html'))) {
    problems.push(`${DIST}/index.html not found: run \`npm run build\` in frontend/ first.`);
  }
  if (!existsSync(CHROMIUM)) {
    problems.push(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH).`);
  }
  return problems;
}

function serverEnv() {
  return {
    ...process.env,
    DATABASE_URL,
    SMARTSCHEDULER_AUTH_SECRET: AUTH_SECRET,
    RUST_LOG: process.env.RUST_LOG || 'info',
  };
}

function logStream(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return createWriteStream(resolve(ARTIFACTS, `${name}.log`), { flags: 'a' });
}

/** Run a CLI command to completion; reject with its stderr on a non-zero exit. */
function runCli(args, logName) {
  return new Promise((resolvePromise, reject) => {
    const log = logStream(logName);
    const child = spawn(BIN, args, { env: serverEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stderr = '';
    child.stdout.pipe(log, { end: false });
    child.stderr.on('data', (d) => {
      stderr += d;
      log.write(d);
    });
    child.on('error', (err) => {
      children.delete(child);
      reject(new Error(`cannot run ${BIN} ${args.join(' ')}: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      children.delete(child);
      if (code === 0) resolvePromise();
      else
        reject(
          new Error(
            `\`smartscheduler ${args.join(' ')}\` failed (exit ${code ?? signal}): ${stderr.trim().split('\n').slice(-5).join(' | ')}`,
          ),
        );
    });
  });
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

/**
 * Start `serve --dev` on 127.0.0.1:port and wait until GET /readyz answers 200.
 * @returns {Promise<{ child: import('node:child_process').ChildProcess, base: string, name: string }>}
 */
async function startServer(name, port) {
  const log = logStream(name);
  const args = ['serve', '--dev', '--addr', `127.0.0.1:${port}`, '--static-dir', DIST];
  log.write(`\n=== ${new Date().toISOString()} ${BIN} ${args.join(' ')}\n`);
  const child = spawn(BIN, args, { env: serverEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = code ?? signal;
    children.delete(child);
  });
  child.on('error', (err) => {
    exited = err.message;
  });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  // Polling /readyz is the one accepted poll: there is no other readiness signal.
  while (Date.now() < deadline) {
    if (exited !== null) {
      throw new Error(`server ${name} exited (${exited}) before it was ready; see e2e-artifacts/${name}.log`);
    }
    try {
      const res = await fetch(`${base}/readyz`);
      if (res.status === 200) return { child, base, name };
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server ${name} not ready within ${READY_TIMEOUT_MS} ms; see e2e-artifacts/${name}.log`);
}

/** SIGTERM and wait for the exit (SIGKILL after a grace period). Resolves with the exit code. */
function stopServer(child, graceMs = 15_000) {
  return new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolvePromise(child.exitCode);
      return;
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolvePromise(code ?? signal);
    });
    child.kill('SIGTERM');
  });
}

function killAllSync() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
process.on('exit', killAllSync);

/** Record every SSE message the page receives (test-side wrapper, the app is unaware). */
function recordSseEvents() {
  const Native = window.EventSource;
  window.__sse = [];
  window.__sseOpened = [];
  class Recording extends Native {
    constructor(url, init) {
      super(url, init);
      window.__sseOpened.push(String(url));
      for (const type of ['RecommendationReady', 'reset', 'auth-expired']) {
        this.addEventListener(type, (ev) => window.__sse.push({ type, data: ev.data, id: ev.lastEventId }));
      }
      // Receipt hints, apart: they are not events of the log.
      this.addEventListener('receipt', (ev) => (window.__receipts ??= []).push({ data: ev.data, at: Date.now() }));
    }
  }
  window.EventSource = Recording;
}

/** Record, in the page, every event the app applied (after de-duplication), by eventId. */
async function recordApplied(page) {
  await page.waitForFunction(() => window.__smartschedulerRealtime !== undefined, null, { timeout: UI_TIMEOUT_MS });
  await page.evaluate(() => {
    if (window.__applied) return;
    window.__applied = [];
    window.__statusLog = [];
    const rt = window.__smartschedulerRealtime;
    rt.on('RecommendationReady', (ev) =>
      window.__applied.push({ eventId: ev.eventId, setId: ev.summary.recommendationSetId, at: Date.now() }),
    );
    rt.onStatus((status) => window.__statusLog.push({ status, role: rt.role, at: Date.now() }));
    // When each set appeared in the sheet, as the page saw it (not when a poll of the test noticed).
    window.__shown = [];
    new MutationObserver(() => {
      const id = document.querySelector('[data-testid="sheet"]')?.getAttribute('data-set-id');
      if (id && !window.__shown.some((s) => s.setId === id)) window.__shown.push({ setId: id, at: Date.now() });
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-set-id'] });
  });
}

const role = (page) => page.evaluate(() => window.__smartschedulerRealtime?.role ?? null);
const statusOf = (page) => page.evaluate(() => document.querySelector('[data-testid="connection-status"]')?.textContent ?? null);

/** smartscheduler_sse_connections of a server, from GET /metrics. */
async function sseConnections(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('smartscheduler_sse_connections'));
  assert.ok(line, 'no smartscheduler_sse_connections in /metrics');
  return Number(line.trim().split(/\s+/).pop());
}

/** Wait until the gauge reads `n` (the server lowers it when it notices a closed stream). */
async function waitSseConnections(base, n, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let last = null;
  // A poll of the server's own gauge: the server offers no event for it.
  while (Date.now() < deadline) {
    last = await sseConnections(base);
    if (last === n) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`smartscheduler_sse_connections stayed at ${last}, expected ${n}`);
}

/**
 * A TCP proxy in front of a server that can make its event streams go silent: it keeps them open
 * but forwards nothing more to the browser (a NAT or proxy that dropped the flow). Other
 * connections, and new ones, flow normally.
 */
async function startStallProxy(targetPort) {
  const { createServer: createTcpServer, connect } = await import('node:net');
  const conns = new Set();
  const server = createTcpServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    const c = { client, upstream, stream: false, stalled: false };
    conns.add(c);
    client.on('data', (d) => {
      // Requests on a kept-alive connection come one after the other: once it carries the
      // event stream, it does until it closes.
      if (d.toString('latin1').includes('GET /api/events')) c.stream = true;
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!c.stalled) client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      conns.delete(c);
    };
    for (const s of [client, upstream]) {
      s.on('close', end);
      s.on('error', end);
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    /** Silence every event stream open now; returns how many. */
    stallEventStreams() {
      let n = 0;
      for (const c of conns) {
        if (c.stream && !c.stalled) {
          c.stalled = true;
          n += 1;
        }
      }
      return n;
    },
    /** Cut every connection open now (a network that went away); new ones flow. Returns how many. */
    dropAll() {
      const n = conns.size;
      for (const c of [...conns]) {
        c.client.destroy();
        c.upstream.destroy();
      }
      return n;
    },
    close() {
      for (const c of conns) {
        c.client.destroy();
        c.upstream.destroy();
      }
      return new Promise((r) => server.close(r));
    },
  };
}

async function signIn(context, base, dispatcherId) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[${dispatcherId} pageerror]`, err));
  await page.addInitScript(recordSseEvents);
  await page.goto(base);
  await page.getByTestId(`signin-${dispatcherId}`).click();
  await page.getByTestId('whoami').waitFor({ timeout: UI_TIMEOUT_MS });
  await waitStatus(page, 'live');
  return page;
}

async function waitStatus(page, status, timeout = UI_TIMEOUT_MS) {
  await page.waitForFunction(
    (s) => document.querySelector('[data-testid="connection-status"]')?.textContent === s,
    status,
    { timeout },
  );
}

/** Select the first job in the list; wait until its sheet has loaded. Returns the job id. */
async function selectFirstJob(page) {
  const row = page.locator('[data-testid^="job-row-"]').first();
  await row.waitFor({ timeout: UI_TIMEOUT_MS });
  const jobId = (await row.getAttribute('data-testid')).slice('job-row-'.length);
  await row.click();
  await page.waitForSelector('[data-testid="sheet-row"], [data-testid="sheet-empty"]', { timeout: UI_TIMEOUT_MS });
  return jobId;
}

async function sheetSetId(page) {
  return page.getByTestId('sheet').getAttribute('data-set-id');
}

/** What an observer would call "the page's realtime state". */
async function snapshot(page) {
  return page.evaluate(() => ({
    setId: document.querySelector('[data-testid="sheet"]')?.getAttribute('data-set-id') ?? null,
    updated: document.querySelector('[data-testid="sheet-updated"]') !== null,
    badges: [...document.querySelectorAll('[data-testid^="job-badge-"]')].map((b) => b.getAttribute('data-testid')),
    rows: document.querySelectorAll('[data-testid="sheet-row"]').length,
  }));
}

/** POST /api/jobs/{id}/recommendations from inside the page (its cookie). */
async function generateFromPage(page, jobId) {
  const res = await page.evaluate(async (id) => {
    const r = await fetch(`/api/jobs/${id}/recommendations`, { method: 'POST' });
    return { status: r.status, body: await r.text() };
  }, jobId);
  assert.equal(res.status, 201, `generate for ${jobId}: ${res.status} ${res.body}`);
  return JSON.parse(res.body);
}

async function waitSheetSet(page, setId, timeout) {
  const current = () => snapshot(page).catch(() => null);
  try {
    await waitSheetSetRaw(page, setId, timeout);
  } catch (err) {
    throw new Error(
      `the sheet did not show set ${setId} with the updated cue within ${timeout} ms (now: ${JSON.stringify(await current())}): ${err.message}`,
    );
  }
}

async function waitSheetSetRaw(page, setId, timeout) {
  await page.waitForFunction(
    (id) => {
      const sheet = document.querySelector('[data-testid="sheet"]');
      return (
        sheet?.getAttribute('data-set-id') === id &&
        document.querySelector('[data-testid="sheet-updated"]') !== null
      );
    },
    setId,
    { timeout },
  );
}

/** Validator for RecommendationReady `data` (the versioned JSON Schema). */
async function schemaValidator() {
  const { default: Ajv2020 } = await import('ajv/dist/2020.js');
  const { default: addFormats } = await import('ajv-formats');
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  return ajv.compile(JSON.parse(readFileSync(SCHEMA, 'utf8')));
}

function assertMatchesSchema(validate, events, who) {
  for (const ev of events) {
    assert.ok(validate(ev), `${who} got an event that breaks the schema: ${JSON.stringify(validate.errors)} in ${JSON.stringify(ev)}`);
  }
}

/** Sign in on a server from Node via the dev endpoint; returns the Cookie header value. */
async function devSessionCookie(base, dispatcherId) {
  const res = await fetch(`${base}/api/dev/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ dispatcherId }),
  });
  assert.equal(res.status, 200, `POST ${base}/api/dev/session: ${res.status} ${await res.text()}`);
  const cookie = res.headers
    .getSetCookie()
    .map((c) => c.split(';')[0])
    .find((c) => c.startsWith('ss_session='));
  assert.ok(cookie, 'POST /api/dev/session set no ss_session cookie');
  return cookie;
}

/** The one headless Chromium of the run (launched on first use). */
async function getBrowser() {
  if (browser) return browser;
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: !process.env.E2E_HEADED,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return browser;
}

const problems = preflight();

before(async () => {
  if (problems.length > 0) return;
  await runCli(['migrate'], 'migrate');
  await runCli(['seed', '--demo'], 'seed');
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await Promise.all([...children].map((c) => stopServer(c, 5_000)));
  killAllSync();
});

test('preflight: server binary, database, build and browser are available', () => {
  assert.deepEqual(problems, [], `e2e cannot run:\n  - ${problems.join('\n  - ')}`);
});

test(
  'live sheet updates per group, and resume across a server restart',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 180_000 },
  async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const portA = await freePort();
    let serverA = await startServer('server-a', portA);

    await getBrowser();
    const aliceCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const bobCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const alice = await signIn(aliceCtx, serverA.base, 'alice');
    const bob = await signIn(bobCtx, serverA.base, 'bob');
    assert.match(await alice.getByTestId('groups').textContent(), /region:north/);
    assert.match(await bob.getByTestId('groups').textContent(), /region:south/);

    const northJob = await selectFirstJob(alice);
    const southJob = await selectFirstJob(bob);
    const bobBefore = await snapshot(bob);
    await alice.evaluate(() => {
      window.__noReload = true;
    });

    // --- 1. a generation for the north job reaches alice within 1 s, not bob ---
    const northSet = await generateFromPage(alice, northJob);
    assert.equal(northSet.jobId, northJob);
    const t0 = Date.now();
    await waitSheetSet(alice, northSet.recommendationSetId, 1_000);
    const latency = Date.now() - t0;
    assert.ok((await alice.getByTestId('sheet-row').count()) > 0, 'alice sheet has no rows');
    assert.ok(await alice.getByTestId('sheet-updated').isVisible(), 'updated cue not visible');
    console.log(`# alice's sheet updated ${latency} ms after the 201`);
    // Why this contractor: the best one's four score parts, as the server stored them.
    const best = northSet.recommendations[0].scoreParts;
    assert.deepEqual(
      await alice.getByTestId('sheet-row').first().getByTestId('score-part').allTextContents(),
      ['proximity', 'skills', 'rating', 'capacity'].map((k) => `${k} ${best[k].toFixed(2)}`),
    );

    // Negative check without sleeping: events are delivered in seq order, so once bob
    // has received an event committed AFTER alice's, alice's would have arrived first.
    assert.deepEqual(await snapshot(bob), bobBefore, "bob's page changed after a north generation");
    const southSet = await generateFromPage(bob, southJob);
    await waitSheetSet(bob, southSet.recommendationSetId, 5_000);
    const bobEvents = await bob.evaluate(() => window.__sse.map((e) => JSON.parse(e.data)));
    const bobRecs = bobEvents.filter((e) => e.type === 'RecommendationReady');
    assert.ok(bobRecs.some((e) => e.jobId === southJob), 'bob did not receive the south event');
    assert.ok(!bobRecs.some((e) => e.jobId === northJob), 'bob received the north event');
    assert.ok(
      bobRecs.every((e) => e.groups.includes('region:south')),
      `bob received an event outside region:south: ${JSON.stringify(bobRecs)}`,
    );
    const aliceEvents = await alice.evaluate(() => window.__sse.map((e) => JSON.parse(e.data)));
    assert.ok(
      aliceEvents.every((e) => e.jobId !== southJob),
      'alice received the south event',
    );

    // --- 2. restart: alice's stream goes down, a set is generated elsewhere, resume ---
    const serverB = await startServer('server-b', await freePort());
    const exitA = await stopServer(serverA.child);
    assert.equal(exitA, 0, `server A should exit 0 on SIGTERM (got ${exitA})`);
    await waitStatus(alice, 'reconnecting', 10_000);

    const cueBefore = await alice.getByTestId('sheet-updated').getAttribute('data-updated-at');
    const cookie = await devSessionCookie(serverB.base, 'alice');
    const res = await fetch(`${serverB.base}/api/jobs/${northJob}/recommendations`, {
      method: 'POST',
      headers: { Cookie: cookie },
    });
    const bodyText = await res.text();
    assert.equal(res.status, 201, `generate on B: ${res.status} ${bodyText}`);
    const whileDown = JSON.parse(bodyText);
    assert.notEqual(whileDown.recommendationSetId, northSet.recommendationSetId);
    assert.equal(await sheetSetId(alice), northSet.recommendationSetId, 'alice saw the set while A was down?');

    serverA = await startServer('server-a', portA);
    await waitStatus(alice, 'live', 30_000);
    await waitSheetSet(alice, whileDown.recommendationSetId, 15_000);
    assert.ok(await alice.getByTestId('sheet-updated').isVisible(), 'updated cue not visible after resume');
    assert.notEqual(
      await alice.getByTestId('sheet-updated').getAttribute('data-updated-at'),
      cueBefore,
      'the updated cue did not fire again after resume',
    );
    assert.ok((await alice.getByTestId('sheet-row').count()) > 0, 'no rows after resume');
    assert.equal(await alice.evaluate(() => window.__noReload), true, 'the page was reloaded');
    const aliceSets = await alice.evaluate(() =>
      window.__sse
        .filter((e) => e.type === 'RecommendationReady')
        .map((e) => JSON.parse(e.data).summary.recommendationSetId),
    );
    assert.ok(aliceSets.includes(northSet.recommendationSetId), 'first set not received over SSE');
    assert.ok(aliceSets.includes(whileDown.recommendationSetId), 'set made while A was down not received over SSE');

    const opened = await alice.evaluate(() => window.__sseOpened);
    console.log(`# alice's EventSource URLs over the run: ${JSON.stringify(opened)}`);

    const validate = await schemaValidator();
    const all = async (page) =>
      page.evaluate(() => window.__sse.filter((e) => e.type === 'RecommendationReady').map((e) => JSON.parse(e.data)));
    assertMatchesSchema(validate, await all(alice), 'alice');
    assertMatchesSchema(validate, await all(bob), 'bob');

    await alice.getByTestId('sheet').screenshot({ path: resolve(ARTIFACTS, 'sheet.png') });
    await alice.screenshot({ path: resolve(ARTIFACTS, 'console.png'), fullPage: true });

    await stopServer(serverB.child);
  },
);

/** Open `n` tabs of one browser profile (context) signed in as `dispatcherId`. */
async function openTabs(context, base, dispatcherId, n) {
  const first = await signIn(context, base, dispatcherId);
  const pages = [first];
  for (let i = 1; i < n; i++) {
    const page = await context.newPage();
    page.on('pageerror', (err) => console.error(`[tab ${i} pageerror]`, err));
    await page.addInitScript(recordSseEvents);
    // The session cookie is the profile's: the tab opens signed in.
    await page.goto(base);
    pages.push(page);
  }
  await Promise.all(pages.map((p) => p.getByTestId('whoami').waitFor({ timeout: UI_TIMEOUT_MS })));
  await Promise.all(pages.map((p) => recordApplied(p)));
  return pages;
}

/** Wait until every page shows `setId` in its sheet with the updated cue; returns the ms it took. */
async function waitAllShow(pages, setId, timeout) {
  const t0 = Date.now();
  await Promise.all(pages.map((p) => waitSheetSet(p, setId, timeout)));
  return Date.now() - t0;
}

async function selectJob(page, jobId) {
  await page.getByTestId(`job-row-${jobId}`).click();
  await page.waitForSelector('[data-testid="sheet-row"], [data-testid="sheet-empty"]', { timeout: UI_TIMEOUT_MS });
}

function assertNoDoubles(applied, who) {
  const ids = applied.map((a) => a.eventId);
  assert.equal(new Set(ids).size, ids.length, `${who} applied an event twice: ${JSON.stringify(ids)}`);
}

test(
  'ten tabs of one profile share one event stream; closing the leader tab hands it over without loss or doubles',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 180_000 },
  async () => {
    const server = await startServer('server-tabs', await freePort());
    const context = await (await getBrowser()).newContext({ viewport: { width: 1024, height: 700 } });
    try {
      const pages = await openTabs(context, server.base, 'alice', 10);
      await Promise.all(pages.map((p) => waitStatus(p, 'live')));

      // Exactly one stream reaches the server, held by the one leader tab.
      await waitSseConnections(server.base, 1);
      const roles = await Promise.all(pages.map(role));
      assert.equal(roles.filter((r) => r === 'leader').length, 1, `roles: ${roles}`);
      assert.equal(roles.filter((r) => r === 'follower').length, 9, `roles: ${roles}`);
      const opened = await Promise.all(pages.map((p) => p.evaluate(() => window.__sseOpened.length)));
      assert.equal(opened.reduce((a, b) => a + b, 0), 1, `EventSources opened per tab: ${opened}`);

      // REST is not starved: every tab loads its jobs and the sheet of the same job, and ten
      // concurrent REST calls (one per tab) all answer.
      const jobId = await selectFirstJob(pages[0]);
      await Promise.all(pages.slice(1).map((p) => selectJob(p, jobId)));
      const calls = await Promise.all(
        pages.map((p) =>
          p.evaluate(async () => {
            const t = performance.now();
            const r = await fetch('/api/jobs');
            await r.text();
            return { status: r.status, ms: Math.round(performance.now() - t) };
          }),
        ),
      );
      assert.deepEqual(calls.map((c) => c.status), Array(10).fill(200), `REST from 10 tabs: ${JSON.stringify(calls)}`);
      console.log(`# 10 tabs: 10 concurrent GET /api/jobs answered, slowest in ${Math.max(...calls.map((c) => c.ms))} ms`);

      // A generation reaches all ten tabs live.
      const tGen = Date.now();
      const first = await generateFromPage(pages[4], jobId);
      const spread = await waitAllShow(pages, first.recommendationSetId, 5_000);
      const seen = await Promise.all(
        pages.map((p) =>
          p.evaluate(
            (id) => ({
              applied: window.__applied.find((a) => a.setId === id)?.at,
              shown: window.__shown.find((s) => s.setId === id)?.at,
            }),
            first.recommendationSetId,
          ),
        ),
      );
      console.log(
        `# 10 tabs, 1 stream: the event reached all 10 tabs ${Math.max(...seen.map((x) => x.applied)) - tGen} ms ` +
          `and all 10 sheets showed the new set ${Math.max(...seen.map((x) => x.shown)) - tGen} ms after the POST was sent ` +
          `(the test's own polling saw it after ${spread} ms)`,
      );

      // --- close the leader tab; a set is generated while the lead changes hands ---
      const leaderIndex = roles.indexOf('leader');
      const rest = pages.filter((_, i) => i !== leaderIndex);
      const t0 = Date.now();
      await pages[leaderIndex].close();
      const during = await generateFromPage(rest[0], jobId);
      // Hand-over: a new leader's stream is open (its tab and every other says live).
      await Promise.any(
        rest.map((p) =>
          p.waitForFunction(
            () =>
              window.__smartschedulerRealtime?.role === 'leader' &&
              window.__smartschedulerRealtime?.status === 'live',
            null,
            { timeout: 15_000 },
          ),
        ),
      );
      await waitAllShow(rest, during.recommendationSetId, 15_000);
      // Times as the pages saw them: the new leader's stream live, the event in every tab.
      const logs = await Promise.all(rest.map((p) => p.evaluate(() => ({ status: window.__statusLog, applied: window.__applied }))));
      const leaderLive = Math.min(
        ...logs.flatMap((l) => l.status.filter((e) => e.at >= t0 && e.role === 'leader' && e.status === 'live').map((e) => e.at)),
      );
      const eventEverywhere = Math.max(...logs.map((l) => l.applied.find((a) => a.setId === during.recommendationSetId).at));
      console.log(
        `# leader tab closed: a new leader's stream was live ${leaderLive - t0} ms after close() was called; ` +
          `the set generated meanwhile reached all 9 tabs after ${eventEverywhere - t0} ms`,
      );
      const newRoles = await Promise.all(rest.map(role));
      assert.equal(newRoles.filter((r) => r === 'leader').length, 1, `roles after hand-over: ${newRoles}`);
      await waitSseConnections(server.base, 1);

      // One more after the hand-over, then: no tab lost an event or applied one twice.
      const after = await generateFromPage(rest[2], jobId);
      await waitAllShow(rest, after.recommendationSetId, 5_000);
      for (const [i, p] of rest.entries()) {
        const applied = await p.evaluate(() => window.__applied);
        assertNoDoubles(applied, `tab ${i}`);
        const sets = applied.map((a) => a.setId);
        for (const s of [first, during, after]) {
          assert.ok(sets.includes(s.recommendationSetId), `tab ${i} never got set ${s.recommendationSetId}: ${JSON.stringify(sets)}`);
        }
      }
      await Promise.all(rest.map((p) => waitStatus(p, 'live')));
    } finally {
      await context.close();
      await stopServer(server.child);
    }
  },
);

test(
  'a silent stream is noticed within 30 s and replaced; an offline blip returns to live without an event; no sideways scroll at 390 px',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 180_000 },
  async () => {
    const server = await startServer('server-stall', await freePort());
    const proxy = await startStallProxy(Number(new URL(server.base).port));
    const context = await (await getBrowser()).newContext({ viewport: { width: 390, height: 844 } });
    try {
      const page = await signIn(context, proxy.base, 'alice');
      await recordApplied(page);
      const jobId = await selectFirstJob(page);
      const first = await generateFromPage(page, jobId);
      await waitSheetSet(page, first.recommendationSetId, 5_000);

      // 390 px wide: the page never scrolls sideways.
      const widths = await page.evaluate(() => ({
        doc: document.documentElement.scrollWidth,
        body: document.body.scrollWidth,
        view: window.innerWidth,
      }));
      assert.ok(widths.doc <= widths.view && widths.body <= widths.view, `sideways scroll at 390 px: ${JSON.stringify(widths)}`);
      await page.screenshot({ path: resolve(ARTIFACTS, 'phone-390.png'), fullPage: true });

      // --- offline blip: the stream stays open; the status comes back to live without any event ---
      const appliedBefore = (await page.evaluate(() => window.__applied)).length;
      const streamsBefore = await page.evaluate(() => window.__sseOpened.length);
      await context.setOffline(true);
      await waitStatus(page, 'offline', 5_000);
      assert.match(await page.getByTestId('connection-label').textContent(), /Offline/);
      assert.equal(await page.getByTestId('sheet-updated').getAttribute('data-freshness'), 'paused');
      await context.setOffline(false);
      await waitStatus(page, 'live', 10_000);
      assert.equal(await page.getByTestId('sheet-updated').getAttribute('data-freshness'), 'live');
      assert.equal((await page.evaluate(() => window.__applied)).length, appliedBefore, 'an event arrived during the blip');
      const reopened = (await page.evaluate(() => window.__sseOpened.length)) - streamsBefore;
      assert.equal(reopened, 0, 'the stream was reopened: this was not a blip the stream stayed open through');
      console.log('# offline blip: live again without an event, on the same stream');

      // --- silent stall: the connection stays open, nothing more arrives ---
      await waitStatus(page, 'live', 10_000);
      const stalled = proxy.stallEventStreams();
      assert.equal(stalled, 1, `expected one event stream through the proxy, found ${stalled}`);
      const t0 = Date.now();
      const cookie = await devSessionCookie(server.base, 'alice');
      const res = await fetch(`${server.base}/api/jobs/${jobId}/recommendations`, { method: 'POST', headers: { Cookie: cookie } });
      assert.equal(res.status, 201, `generate during the stall: ${res.status}`);
      const meanwhile = await res.json();
      await waitStatus(page, 'reconnecting', 30_000);
      const detected = Date.now() - t0;
      assert.ok(detected <= 30_000, `stall noticed after ${detected} ms`);
      await waitStatus(page, 'live', 15_000);
      await waitSheetSet(page, meanwhile.recommendationSetId, 10_000);
      const recovered = Date.now() - t0;
      console.log(`# silent stall: noticed after ${detected} ms, live again with the set made meanwhile after ${recovered} ms`);
      assertNoDoubles(await page.evaluate(() => window.__applied), 'alice');
    } finally {
      await context.close();
      await proxy.close();
      await stopServer(server.child);
    }
  },
);

/** Record, in the page, every Content-Security-Policy violation it reports. */
function recordCspViolations() {
  window.__csp = [];
  document.addEventListener('securitypolicyviolation', (e) =>
    window.__csp.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample }),
  );
}

/**
 * A page server on another port (another origin, the same site): `pages` maps a path to its HTML,
 * looked up at each request (so the test can add pages once it knows what to put in them).
 */
async function startOtherOrigin(pages) {
  const { createServer: createHttpServer } = await import('node:http');
  const server = createHttpServer((req, res) => {
    const html = pages[new URL(req.url, 'http://x').pathname];
    res.writeHead(html ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html ?? 'not found');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

test(
  'under its CSP the console signs in and streams with no violation; another origin can neither frame it nor post to it with the cookie',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 120_000 },
  async () => {
    const server = await startServer('server-csp', await freePort());
    const context = await (await getBrowser()).newContext({ viewport: { width: 1280, height: 800 } });
    /** @type {Record<string, string>} */
    const pages = {};
    const other = await startOtherOrigin(pages);
    try {
      // --- the console itself, under its own CSP ---
      const page = await context.newPage();
      const consoleErrors = [];
      page.on('console', (m) => {
        if (m.type() === 'error') consoleErrors.push(m.text());
      });
      page.on('pageerror', (err) => consoleErrors.push(String(err)));
      await page.addInitScript(recordSseEvents);
      await page.addInitScript(recordCspViolations);
      const doc = await page.goto(server.base);
      const headers = await doc.allHeaders();
      const csp = headers['content-security-policy'] ?? '';
      for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]) {
        assert.ok(csp.includes(directive), `the console's CSP lacks ${directive}: ${csp}`);
      }
      assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), `the CSP allows inline code: ${csp}`);
      assert.equal(headers['x-frame-options'], 'DENY');
      assert.equal(headers['x-content-type-options'], 'nosniff');
      await page.getByTestId('signin-alice').click();
      await page.getByTestId('whoami').waitFor({ timeout: UI_TIMEOUT_MS });
      await waitStatus(page, 'live');
      const jobId = await selectFirstJob(page);
      const set = await generateFromPage(page, jobId);
      await waitSheetSet(page, set.recommendationSetId, 5_000);
      assert.deepEqual(await page.evaluate(() => window.__csp), [], 'the console broke its own CSP');
      const cspErrors = consoleErrors.filter((t) => /Content Security Policy|Refused to/i.test(t));
      assert.deepEqual(cspErrors, [], 'CSP errors in the console');

      // --- a page of another origin frames the console: the browser refuses, and says why ---
      pages['/frame'] = `<!doctype html><title>framer</title><iframe src="${server.base}/" width="800" height="600"></iframe>`;
      pages['/post'] = `<!doctype html><title>poster</title><form method="post" enctype="text/plain"
        action="${server.base}/api/jobs/${jobId}/recommendations"><input name="x" value="1"></form>`;
      const framer = await context.newPage();
      const refused = framer.waitForEvent('console', {
        predicate: (m) => /frame-ancestors/.test(m.text()),
        timeout: UI_TIMEOUT_MS,
      });
      const loaded = framer.waitForEvent('framenavigated', {
        predicate: (f) => f !== framer.mainFrame(),
        timeout: UI_TIMEOUT_MS,
      });
      await framer.goto(`${other.base}/frame`);
      console.log(`# framed by another origin: ${(await refused).text()}`);
      const frame = await loaded;
      assert.equal(
        await frame.locator('[data-testid^="signin-"], [data-testid="whoami"]').count(),
        0,
        `the console rendered inside another origin's frame (${frame.url()})`,
      );

      // --- that origin (same site: SameSite=Lax sends the cookie) posts a form to the API: 403 ---
      const poster = await context.newPage();
      await poster.goto(`${other.base}/post`);
      const answer = poster.waitForResponse((r) => r.url().endsWith(`/api/jobs/${jobId}/recommendations`));
      await poster.locator('form').evaluate((f) => f.submit());
      const res = await answer;
      const body = await res.text();
      assert.equal(res.status(), 403, `a cross-origin form post with the session cookie: ${res.status()} ${body}`);
      assert.equal(JSON.parse(body).error.code, 'cross_origin_request');
      assert.equal(await sheetSetId(page), set.recommendationSetId, 'the refused post made a set');
    } finally {
      await context.close();
      await other.close();
      await stopServer(server.child);
    }
  },
);

/**
 * Headless Chromium reports every page as visible whatever is in front, so the test steers
 * `document.visibilityState` of each page (and fires `visibilitychange`, as a browser does); the rest is
 * real: the notification permission, `Notification` (wrapped to record what was shown), Web Locks across
 * the tabs, the shared stream and its leader, the server's stars.
 */
function steerVisibilityAndRecordNotifications() {
  let hidden = false;
  Object.defineProperty(Document.prototype, 'visibilityState', { get: () => (hidden ? 'hidden' : 'visible') });
  Object.defineProperty(Document.prototype, 'hidden', { get: () => hidden });
  window.__setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event('visibilitychange'));
  };
  window.__notifications = [];
  const Native = window.Notification;
  class Recorded extends Native {
    constructor(title, options) {
      super(title, options);
      window.__notifications.push({ title, body: options?.body, tag: options?.tag, instance: this });
    }
  }
  window.Notification = Recorded;
}

const notificationsOf = (page) =>
  page.evaluate(() => window.__notifications.map(({ title, body, tag }) => ({ title, body, tag })));
const setHidden = (page, value) => page.evaluate((v) => window.__setHidden(v), value);

/** Generate from `page`, then wait until every page applied the set's event; returns that event's id. */
async function generateAndApply(page, pages, jobId) {
  const set = await generateFromPage(page, jobId);
  const id = set.recommendationSetId;
  const applied = (p) =>
    p.waitForFunction((s) => window.__applied.find((a) => a.setId === s)?.eventId, id, { timeout: UI_TIMEOUT_MS });
  const ids = await Promise.all(pages.map(async (p) => (await applied(p)).jsonValue()));
  assert.equal(new Set(ids).size, 1, `the tabs applied different events for one set: ${ids}`);
  return ids[0];
}

test(
  'a watched job notifies once across two tabs while the console is hidden, never while a tab is visible, and the click opens the job',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 120_000 },
  async () => {
    const server = await startServer('server-watch', await freePort());
    const context = await (await getBrowser()).newContext({ viewport: { width: 1024, height: 700 } });
    try {
      await context.grantPermissions(['notifications'], { origin: server.base });
      await context.addInitScript(steerVisibilityAndRecordNotifications);
      const pages = await openTabs(context, server.base, 'alice', 2);
      await Promise.all(pages.map((p) => waitStatus(p, 'live')));

      // Star the first job in one tab; the star is the dispatcher's, so a reload of the other shows it.
      const rows = pages[1].locator('[data-testid^="job-row-"]');
      await rows.first().waitFor({ timeout: UI_TIMEOUT_MS });
      const [watched, other] = await Promise.all([0, 1].map(async (i) => (await rows.nth(i).getAttribute('data-testid')).slice(8)));
      const title = await pages[1].getByTestId(`job-row-${watched}`).locator('.job__title').evaluate((e) => e.firstChild.textContent);
      await pages[1].getByTestId(`job-star-${watched}`).click();
      await pages[1].waitForFunction(
        (id) => fetch('/api/watches').then((r) => r.json()).then((w) => w.jobIds.includes(id)),
        watched,
        { timeout: UI_TIMEOUT_MS },
      );
      await pages[0].reload();
      await pages[0].getByTestId(`job-star-${watched}`).waitFor({ timeout: UI_TIMEOUT_MS });
      await pages[0].waitForFunction(
        (id) => document.querySelector(`[data-testid="job-star-${id}"]`)?.getAttribute('aria-pressed') === 'true',
        watched,
        { timeout: UI_TIMEOUT_MS },
      );
      await recordApplied(pages[0]);
      await Promise.all(pages.map((p) => waitStatus(p, 'live')));
      const roles = await Promise.all(pages.map(role));
      assert.deepEqual([...roles].sort(), ['follower', 'leader'], `roles: ${roles}`);
      const leaderNow = pages[roles.indexOf('leader')];
      const followerNow = pages[roles.indexOf('follower')];

      // Visible: no notification.
      await generateAndApply(pages[0], pages, watched);
      // One tab visible (the follower), the leader hidden: still none (a tab of the console is in view).
      await setHidden(leaderNow, true);
      await generateAndApply(pages[0], pages, watched);
      for (const page of pages) assert.deepEqual(await notificationsOf(page), [], 'a notification while a tab was visible');

      // Every tab hidden: exactly one notification, from the leader, tagged with the event id.
      await setHidden(followerNow, true);
      await followerNow.getByTestId(`job-row-${other}`).click();
      await leaderNow.getByTestId(`job-row-${other}`).click();
      const eventId = await generateAndApply(pages[0], pages, watched);
      await leaderNow.waitForFunction(() => window.__notifications.length > 0, null, { timeout: UI_TIMEOUT_MS });
      const shown = [...(await notificationsOf(leaderNow)), ...(await notificationsOf(followerNow))];
      assert.equal(shown.length, 1, `notifications: ${JSON.stringify(shown)}`);
      assert.equal(shown[0].tag, eventId);
      assert.equal(shown[0].title, `New recommendations: ${title}`);
      assert.match(shown[0].body, /contractors? recommended|No contractor/);

      // An event for a job nobody starred: nothing.
      await generateAndApply(pages[0], pages, other);
      assert.equal((await notificationsOf(leaderNow)).length + (await notificationsOf(followerNow)).length, 1);

      // The click brings the tab forward on the watched job.
      await leaderNow.evaluate(() => window.__notifications[0].instance.onclick(new Event('click')));
      await leaderNow.waitForFunction(
        (id) => document.querySelector(`[data-testid="job-row-${id}"]`)?.getAttribute('aria-pressed') === 'true',
        watched,
        { timeout: UI_TIMEOUT_MS },
      );
      await leaderNow.waitForSelector('[data-testid="sheet-row"], [data-testid="sheet-empty"]', { timeout: UI_TIMEOUT_MS });
    } finally {
      await context.close();
      await stopServer(server.child);
    }
  },
);

/** The "Seen by" entry of `dispatcherId` on `page`: its data-seen-at and text, or null when not shown. */
const seenEntry = (page, dispatcherId) =>
  page.evaluate((id) => {
    const e = document.querySelector(`[data-testid="seen-by-entry"][data-dispatcher-id="${id}"]`);
    return e ? { seenAt: e.getAttribute('data-seen-at'), text: e.textContent } : null;
  }, dispatcherId);

test(
  'delivery receipts: a dispatcher offline for 20 s is "not yet" on a colleague\'s sheet, and seen with a time, live, once back online',
  { skip: problems.length > 0 ? 'preflight failed (see above)' : false, timeout: 180_000 },
  async () => {
    const server = await startServer('server-receipts', await freePort());
    const aliceCtx = await (await getBrowser()).newContext({ viewport: { width: 1280, height: 800 } });
    const carolCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const cleanups = [];
    try {
      // alice (north) and carol (north and south): two dispatchers of the north group. Carol's page talks
      // to the server through a TCP proxy: `context.setOffline` fails new requests but leaves a stream that
      // is already open flowing, so her network "going away" also cuts what she has open.
      const proxy = await startStallProxy(Number(new URL(server.base).port));
      cleanups.push(() => proxy.close());
      const alice = await signIn(aliceCtx, server.base, 'alice');
      const carol = await signIn(carolCtx, proxy.base, 'carol');
      await Promise.all([recordApplied(alice), recordApplied(carol)]);
      const jobId = await selectFirstJob(alice);
      await selectJob(carol, jobId);
      await alice.evaluate(() => {
        window.__noReload = true;
      });
      // Every GET of the receipts alice's page makes: the update must come from the stream, not a fetch.
      const receiptFetches = [];
      alice.on('request', (r) => {
        if (r.method() === 'GET' && r.url().endsWith(`/api/jobs/${jobId}/receipts`)) receiptFetches.push(Date.now());
      });

      // Carol's console has been live a while: it knows its position (a heartbeat tells it).
      await carol.waitForFunction(() => window.__smartschedulerRealtime.lastPosition !== null, null, { timeout: 25_000 });
      // --- carol goes offline; she really can receive nothing ---
      await carolCtx.setOffline(true);
      assert.ok(proxy.dropAll() >= 1, "carol's stream did not go through the proxy");
      await waitStatus(carol, 'offline', 5_000);
      const carolFetch = await carol.evaluate(() =>
        fetch('/api/me').then(
          (r) => `answered ${r.status}`,
          (e) => `failed: ${e.message}`,
        ),
      );
      assert.match(carolFetch, /^failed/, `carol's page reached the server while offline: ${carolFetch}`);
      const offlineAt = Date.now();

      // --- alice generates: her sheet shows herself seen, carol not yet ---
      const set = await generateFromPage(alice, jobId);
      await waitSheetSet(alice, set.recommendationSetId, 5_000);
      await alice.waitForFunction(
        () => document.querySelector('[data-testid="seen-by-entry"][data-dispatcher-id="alice"]')?.getAttribute('data-seen-at'),
        null,
        { timeout: UI_TIMEOUT_MS },
      );
      const line = await alice.getByTestId('seen-by').textContent();
      assert.match(line, /^Seen by \d+ of \d+ north dispatchers · .*Carol Chen.* not yet$/, `the line: ${line}`);
      assert.deepEqual(await seenEntry(alice, 'carol'), { seenAt: '', text: 'Carol Chen not yet' });
      const seenAlice = await seenEntry(alice, 'alice');
      assert.match(seenAlice.text, /^Alice Anders seen \d\d:\d\d:\d\d/, `alice's entry: ${seenAlice.text}`);

      // Offline for 20 s: carol's page gets nothing and alice's sheet keeps saying "not yet".
      while (Date.now() - offlineAt < 20_000) {
        await new Promise((r) => setTimeout(r, 2_000));
        assert.equal((await seenEntry(alice, 'carol')).seenAt, '', 'carol counted as seen while offline');
      }
      const carolGot = await carol.evaluate(
        (id) => ({
          applied: window.__applied.some((a) => a.setId === id),
          sse: window.__sse.some((e) => e.type === 'RecommendationReady' && JSON.parse(e.data).summary.recommendationSetId === id),
        }),
        set.recommendationSetId,
      );
      assert.deepEqual(carolGot, { applied: false, sse: false }, "carol's page received the set while offline");
      assert.equal(await statusOf(carol), 'offline');

      // --- carol back online: her page applies the set and reports; alice's sheet shows her seen, live ---
      const fetchesBefore = receiptFetches.length;
      const backAt = Date.now();
      await carolCtx.setOffline(false);
      await carol
        .waitForFunction((id) => document.querySelector('[data-testid="sheet"]')?.getAttribute('data-set-id') === id, set.recommendationSetId, {
          timeout: 30_000,
        })
        .catch(async (err) => {
          const state = await carol.evaluate(() => ({
            status: window.__smartschedulerRealtime.status,
            role: window.__smartschedulerRealtime.role,
            position: window.__smartschedulerRealtime.lastPosition,
            opened: window.__sseOpened,
            online: navigator.onLine,
          }));
          throw new Error(`carol never applied the set after coming back online: ${JSON.stringify(state)}: ${err.message}`);
        });
      await alice.waitForFunction(
        () => document.querySelector('[data-testid="seen-by-entry"][data-dispatcher-id="carol"]')?.getAttribute('data-seen-at'),
        null,
        { timeout: 20_000 },
      );
      const shownAfter = Date.now() - backAt;
      const carolSeen = await seenEntry(alice, 'carol');
      assert.match(carolSeen.text, /^Carol Chen seen \d\d:\d\d:\d\d/, `carol's entry: ${carolSeen.text}`);
      const seenAt = Date.parse(carolSeen.seenAt);
      assert.ok(seenAt >= backAt - 2_000, `carol seen at ${carolSeen.seenAt}, before she was back online`);
      assert.doesNotMatch(await alice.getByTestId('seen-by').textContent(), /Carol Chen/);
      assert.equal(await alice.evaluate(() => window.__noReload), true, "alice's page was reloaded");
      assert.equal(receiptFetches.length, fetchesBefore, "alice's page fetched the receipts again instead of applying the hint");
      const hints = await alice.evaluate(() => (window.__receipts ?? []).map((r) => JSON.parse(r.data)));
      assert.ok(
        hints.some((h) => h.dispatcherId === 'carol'),
        `no receipt hint about carol reached alice's stream: ${JSON.stringify(hints)}`,
      );
      // The hints never moved alice's stream position.
      const alicePos = await alice.evaluate(() => window.__smartschedulerRealtime.lastPosition);
      const lastEvent = await alice.evaluate(() => window.__sse.filter((e) => e.type === 'RecommendationReady').at(-1)?.id);
      assert.equal(alicePos?.split('-')[0], lastEvent?.split('-')[0]);
      assert.ok(BigInt(alicePos.split('-')[1]) >= BigInt(lastEvent.split('-')[1]));
      console.log(`# receipts: carol back online, shown seen on alice's sheet ${shownAfter} ms later (${carolSeen.text})`);
      await alice.getByTestId('sheet').screenshot({ path: resolve(ARTIFACTS, 'seen-by.png') });
    } finally {
      await aliceCtx.close();
      await carolCtx.close();
      for (const c of cleanups) await c();
      await stopServer(server.child);
    }
  },
);
