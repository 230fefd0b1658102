// Hostile web pages (issue 36): a page from another origin tries to drive a tokenless loopback
// `clo serve` (the default set-up: no token on 127.0.0.1) with a form POST and with fetch POSTs;
// the run it aims at keeps running. The UI on the server's own origin still starts and cancels
// a run. The server here is this test's own (`CLO_BIN serve --toy --web dist`, no token).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const art = process.env.CLO_E2E_ARTIFACTS;
let server;
let base;
let work;
let attacker;
let attackerUrl;
let browser;

const api = async (method, path, body) => {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
};

const state = async (name) => (await api('GET', `/api/runs/${name}`)).body.state;

const waitFor = async (what, check, ms = 120_000) => {
  const started = Date.now();
  for (;;) {
    if (await check()) return;
    assert.ok(Date.now() - started < ms, `no ${what} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
};

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'clo-csrf-'));
  // No token: the default loopback set-up, where only the browser guard stands between a page
  // and the server (run.sh's CLO_TOKEN would set one through the environment).
  const env = { ...process.env };
  delete env.CLO_TOKEN;
  server = spawn(process.env.CLO_BIN, ['serve', '--port', '0', '--toy', '--web', 'dist',
    '--workdir', work], { stdio: ['ignore', 'pipe', 'inherit'], env });
  base = await new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/http:\/\/[0-9.:]+/);
      if (m) resolve(m[0]);
    });
    server.on('exit', (code) => reject(new Error(`clo serve exited with ${code}`)));
  });
  // The attacker's page, on another port of the same machine: another origin.
  attacker = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><title>cute cats</title>
      <form id=f method=POST action="${base}/api/runs/victim/cancel" target=sink>
        <input name=x value=1></form>
      <iframe name=sink></iframe>
      <script>
        window.results = [];
        const tries = [
          fetch('${base}/api/runs/victim/cancel', { method: 'POST', mode: 'no-cors',
            headers: { 'content-type': 'text/plain' }, body: '{}' }),
          fetch('${base}/api/runs/victim/cancel', { method: 'POST', mode: 'no-cors' }),
          fetch('${base}/api/runs/victim/cancel', { method: 'POST',
            headers: { 'content-type': 'application/json' }, body: '{}' }),
          fetch('${base}/api/runs', { method: 'POST', mode: 'no-cors',
            headers: { 'content-type': 'text/plain' },
            body: JSON.stringify({ name: 'planted', model: 'toy', dataset: 'toy', config: {} }) }),
        ];
        Promise.allSettled(tries).then((r) => {
          window.results = r.map((x) => x.status);
          document.getElementById('f').submit();
          window.done = true;
        });
      </script>`);
  });
  await new Promise((r) => attacker.listen(0, '127.0.0.1', r));
  attackerUrl = `http://127.0.0.1:${attacker.address().port}/`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  attacker?.close();
  server?.kill();
  rmSync(work, { recursive: true, force: true });
});

test('a page from another origin cannot cancel or start runs', async () => {
  const created = await api('POST', '/api/runs', { name: 'victim', model: 'toy', dataset: 'toy',
    config: { steps: 5000, batch_size: 2 } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  await waitFor('running run', async () => (await state('victim')) === 'running');

  const page = await browser.newPage();
  await page.goto(attackerUrl);
  await page.waitForFunction(() => window.done === true, null, { timeout: 30_000 });
  // The form's answer arrives in the iframe: the server's refusal.
  const frame = page.frame({ name: 'sink' });
  await frame.waitForFunction(() => document.body?.innerText.includes('origin'), null,
    { timeout: 30_000 });
  const refusal = await frame.evaluate(() => document.body.innerText);
  assert.match(refusal, /forbidden/);
  await page.screenshot({ path: `${art}/csrf-attacker.png` });
  await page.close();

  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await state('victim'), 'running', 'the run was not cancelled');
  const runs = (await api('GET', '/api/runs')).body.map((r) => r.name);
  assert.ok(!runs.includes('planted'), `no run was planted: ${runs}`);
});

test('the UI on its own origin still starts and cancels a run', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(60_000);
  await page.goto(`${base}/runs/victim`);
  await page.getByRole('button', { name: 'Cancel run', exact: true }).click();
  await waitFor('cancelled run', async () => (await state('victim')) === 'cancelled');

  await page.goto(`${base}/`);
  await page.waitForSelector('select[name=model] option[value=toy]', { state: 'attached' });
  await page.waitForSelector('select[name=dataset] option[value=toy]', { state: 'attached' });
  await page.selectOption('select[name=model]', 'toy');
  await page.selectOption('select[name=dataset]', 'toy');
  await page.fill('input[name=name]', 'own-origin');
  await page.fill('input[name=steps]', '2000');
  await page.fill('input[name=batch_size]', '2');
  await page.click('form button[type=submit]');
  await page.waitForURL('**/runs/own-origin');
  await waitFor('started run', async () =>
    ['queued', 'running'].includes(await state('own-origin')));
  await page.getByRole('button', { name: 'Cancel run', exact: true }).click();
  await waitFor('cancelled run', async () => (await state('own-origin')) === 'cancelled');
  await page.close();
});
