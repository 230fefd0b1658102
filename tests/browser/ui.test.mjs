// The web UI in a real browser (Debian's chromium through playwright-core) against a real
// `clo serve --toy --token T` on loopback: the token, a short run created from the form with
// its chart fed live over SSE, a cancelled run resumed from its page, the data page, a streamed playground reply, two models side by
// side, and the evals report. Screenshots go to CLO_E2E_ARTIFACTS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const base = process.env.CLO_URL;
const token = process.env.CLO_TOKEN;
const art = process.env.CLO_E2E_ARTIFACTS;
const RUN = 'e2e-clo';
const STEPS = 30;

let browser;
let page;
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(60_000);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
});

after(async () => {
  await browser?.close();
});

const shot = (name) => page.screenshot({ path: `${art}/${name}.png`, fullPage: true });

test('the API token is asked for, then used on every call', async () => {
  await page.goto(`${base}/`);
  await page.getByText('missing or wrong bearer token').first().waitFor();
  await page.fill('header .token input', token);
  await page.press('header .token input', 'Enter');
  await page.reload();
  await page.getByText('No runs yet').waitFor();
});

test('a run created from the form charts its metrics live', async () => {
  await page.waitForSelector('select[name=model] option[value=toy]', { state: 'attached' });
  await page.waitForSelector('select[name=dataset] option[value=toy]', { state: 'attached' });
  // The form starts from the server's defaults: the paper's.
  assert.equal(await page.inputValue('input[name=beta]'), '0.1');
  assert.equal(await page.inputValue('input[name=lambda]'), '0.5');
  assert.equal(await page.inputValue('select[name=method]'), 'clo');
  await page.selectOption('select[name=model]', 'toy');
  await page.selectOption('select[name=dataset]', 'toy');
  // The form lists this machine's devices (data parallelism); ticking cpu trains there.
  await page.waitForSelector('input[name=devices][value=cpu]', { state: 'attached' });
  await page.check('input[name=devices][value=cpu]');
  await page.fill('input[name=name]', RUN);
  await page.fill('input[name=steps]', String(STEPS));
  await page.fill('input[name=batch_size]', '4');
  await page.fill('input[name=lr]', '0.001');
  await shot('runs-form');
  // A bad value is refused in the form, naming the field.
  await page.fill('input[name=epochs]', 'two');
  await page.click('form button[type=submit]');
  await page.getByText('Epochs: give a whole number').waitFor();
  await page.fill('input[name=epochs]', '1');
  await page.click('form button[type=submit]');
  await page.waitForURL(`**/runs/${RUN}`);

  // Watch the step counter while the run trains: points arrive one by one, not at the end.
  const seen = new Set();
  const started = Date.now();
  for (;;) {
    const n = Number(await page.textContent('[data-testid=points]'));
    seen.add(n);
    const state = await page.textContent('[data-testid=state]').catch(() => '');
    if (state === 'finished' && n === STEPS) break;
    assert.ok(!['failed', 'cancelled', 'interrupted'].includes(state), `run ${state}`);
    assert.ok(Date.now() - started < 300_000, `no end after 300 s; seen ${[...seen]}`);
    if (seen.size === 3) await shot('run-live');
    await page.waitForTimeout(100);
  }
  const partial = [...seen].filter((n) => n > 0 && n < STEPS);
  assert.ok(partial.length >= 2, `the chart got its points at once: ${[...seen]}`);
  // CLO's charts: loss terms, margins and accuracies per direction, lr; each drawn.
  for (const id of ['loss', 'margins', 'accuracy', 'rewards', 'lr']) {
    await page.waitForSelector(`figure[data-chart=${id}] svg path`, { state: 'attached' });
  }
  for (const name of ['NLL term', 'preference term', 'English prompts', 'target prompts']) {
    assert.ok(await page.getByText(name).count() > 0, `no legend entry ${name}`);
  }
  await shot('run-page');
});

test('a finished run exports a model', async () => {
  await page.fill('input[name=model_name]', `${RUN}-hf`);
  // The page polls the run's state every 2 s; what is typed in the form survives the polls.
  await page.waitForTimeout(4500);
  assert.equal(await page.inputValue('input[name=model_name]'), `${RUN}-hf`);
  await page.getByRole('button', { name: 'Export', exact: true }).click();
  await page.getByText(`as model ${RUN}-hf`).waitFor();
});

test('a cancelled run resumes from its page', async () => {
  const api = (path, body) => page.evaluate(async ([path, body, token]) => {
    const res = await fetch(path, { method: 'POST', body: JSON.stringify(body),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } });
    return { status: res.status, body: await res.json() };
  }, [path, body, token]);
  const created = await api('/api/runs', { name: 'e2e-resume', model: 'toy', dataset: 'toy',
    config: { steps: 5000, batch_size: 2, save_every: 1 } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  await api('/api/runs/e2e-resume/cancel', {});
  await page.goto(`${base}/runs/e2e-resume`);
  await page.waitForFunction(() =>
    document.querySelector('[data-testid=state]')?.textContent === 'cancelled', null, { timeout: 120_000 });
  await page.getByRole('button', { name: 'Resume', exact: true }).click();
  await page.waitForFunction(() =>
    ['queued', 'running'].includes(document.querySelector('[data-testid=state]')?.textContent), null,
    { timeout: 30_000 });
  await shot('run-resumed');
  // Stop it again so that it does not slow the tests that follow.
  await api('/api/runs/e2e-resume/cancel', {});
});

test('the data page shows quadruples side by side with language flags', async () => {
  await page.click('header nav >> text=Data');
  await page.waitForSelector('table.quads tbody tr');
  assert.equal(await page.locator('table.quads tbody tr').count(), 20);
  // Both sides carry a badge per text, in the language expected.
  assert.ok(await page.locator('table.quads .badge.ok', { hasText: 'toy' }).count() >= 20);
  assert.ok(await page.locator('table.quads .badge.ok', { hasText: 'en' }).count() >= 10);
  await page.getByRole('button', { name: 'Next →' }).click();
  await page.getByText('records 21–40 of 800').waitFor();
  await shot('data');
});

test('a dataset uploaded from the data page is checked, stored and shown', async () => {
  const quad = (i) => JSON.stringify({ id: `u${i}`, lang: 'toy', x_en: `Question ${i}?`, y_en: `Answer ${i}.`, x_tgt: `Kwestio ${i}?`, y_tgt: `Jibu ${i}.` });
  await page.setInputFiles('input[name=upload_file]', {
    name: 'mine.jsonl', mimeType: 'application/x-ndjson', buffer: Buffer.from(`${quad(1)}\n${quad(2)}\n`),
  });
  await page.click('form.upload button[type=submit]');
  await page.getByText('mine uploaded: 2 records').waitFor();
  // The list reloads with the new dataset chosen.
  await page.waitForFunction(() => document.querySelector('select[name=dataset]')?.value === 'mine');
  await page.waitForSelector('table.quads tbody tr');
  assert.equal(await page.locator('table.quads tbody tr').count(), 2);
  // A bad line is refused, named by the upload's name and line; nothing is stored.
  await page.setInputFiles('input[name=upload_file]', {
    name: 'broken.jsonl', mimeType: 'application/x-ndjson', buffer: Buffer.from(`${quad(1)}\n{"x_en": 3}\n`),
  });
  await page.click('form.upload button[type=submit]');
  await page.getByText('broken.jsonl:2').waitFor();
  const listed = await fetch(`${base}/api/datasets`, { headers: { Authorization: `Bearer ${token}` } });
  const names = (await listed.json()).map((d) => d.name);
  assert.ok(names.includes('mine') && !names.includes('broken'), names.join(','));
  await shot('data-upload');
});

test('the playground streams a reply, with a language badge', async () => {
  await page.click('header nav >> text=Playground');
  await page.waitForSelector('select[name=a] option[value=toy]', { state: 'attached' });
  await page.selectOption('select[name=a]', 'toy');
  await page.fill('textarea[name=prompt]', 'What pet does Ana have?');
  await page.click('form.chat-controls button[type=submit]');
  await page.waitForSelector('[data-pane=a] .turn.assistant .badge');
  const reply = await page.textContent('[data-pane=a] .turn.assistant .text');
  assert.ok(reply.trim().length > 0, 'an empty reply');
  // The reply was put together from the stream's events, one per token or so.
  const pieces = Number(await page.getAttribute('[data-pane=a] .turn.assistant', 'data-pieces'));
  assert.ok(pieces >= 3, `the reply came in ${pieces} pieces`);
  assert.equal(await page.textContent('[data-pane=a] .turn.assistant .badge'), 'en');
});

test('a chat the server fails shows the error, not an empty answer', async () => {
  const turns = await page.locator('[data-pane=a] .turn').count();
  await page.route('**/v1/chat/completions', (route) => route.fulfill({
    status: 500, contentType: 'application/json',
    body: JSON.stringify({ error: { message: 'the model fell over', type: 'internal' } }),
  }));
  try {
    await page.fill('textarea[name=prompt]', 'Another question?');
    await page.click('form.chat-controls button[type=submit]');
    await page.getByText('the model fell over').waitFor();
  } finally {
    await page.unroute('**/v1/chat/completions');
  }
  // The unanswered question and its empty answer leave the pane.
  await page.waitForFunction((n) => document.querySelectorAll('[data-pane=a] .turn').length === n, turns);
});

test('two models answer the same prompt side by side', async () => {
  const res = await fetch(`${base}/api/datasets/toy?limit=1`, { headers: { Authorization: `Bearer ${token}` } });
  const question = (await res.json()).records[0].x_tgt;
  await page.check('input[name=side_by_side]');
  await page.waitForSelector(`[data-pane=b] select[name=b] option[value="run:${RUN}"]`, { state: 'attached' });
  await page.selectOption('[data-pane=b] select[name=b]', `run:${RUN}`);
  await page.click('[data-pane=a] button.link'); // clear pane a
  await page.fill('textarea[name=prompt]', question);
  await page.click('form.chat-controls button[type=submit]');
  for (const p of ['a', 'b']) {
    await page.waitForSelector(`[data-pane=${p}] .turn.assistant .badge`);
    assert.equal(await page.textContent(`[data-pane=${p}] .turn.user .text`), question);
  }
  await shot('playground');
});

test('the evals page shows the report with its charts', async () => {
  await page.click('header nav >> text=Evals');
  await page.waitForSelector('article.report table');
  assert.ok(await page.locator('article.report svg').count() >= 1, 'no chart');
  assert.ok((await page.textContent('article.report')).includes('0.639 ± 0.057'));
  await shot('evals');
});

test('no errors in the page', () => {
  assert.deepEqual(pageErrors, []);
});
