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
    }
  }
  window.EventSource = Recording;
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
    const { chromium } = await import('playwright-core');
    mkdirSync(ARTIFACTS, { recursive: true });
    const portA = await freePort();
    let serverA = await startServer('server-a', portA);

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
