// clo's engine in the browser: Debian's chromium with WebGPU (SwiftShader, --enable-unsafe-webgpu)
// against the same `clo serve` as ui.test.mjs. Through `window.clo` (the JavaScript API), the
// toy model and the qwen2 fixture are downloaded from the server, put on WebGPU, and answer
// greedily with the tokens native `clo generate --chat-template --temperature 0 --json` gives;
// the streamed answer adds up to the whole one; after a reload the files come from the browser's
// cache. A browser without WebGPU gets an error that says
// so. The playground's "this browser" engine answers as native does. Generation speed (tokens/s, in-browser and native on lavapipe) is printed, not asserted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.CLO_URL;
const token = process.env.CLO_TOKEN;
const clo = process.env.CLO_BIN;
const workdir = process.env.CLO_WORKDIR;
const QUESTION = 'What pet does Nia have?';
const MAX = 24;

let browser;
let page;
const pageErrors = [];

const launch = (args) => chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', ...args],
});

before(async () => {
  browser = await launch(['--enable-unsafe-webgpu', '--enable-features=Vulkan',
    '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader']);
  page = await browser.newPage();
  page.setDefaultTimeout(300_000);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(`${base}/`);
  await page.evaluate((t) => localStorage.setItem('clo-token', JSON.stringify(t)), token);
  await page.reload();
});

after(async () => {
  await browser?.close();
});

/// Native greedy generation of the same question, as `clo generate` gives it.
const native = (modelDir, device = 'cpu') => {
  const started = Date.now();
  const out = execFileSync(clo, ['generate', '--model', modelDir, '--prompt', QUESTION,
    '--chat-template', '--temperature', '0', '--max-new-tokens', String(MAX), '--json',
    '--device', device], { encoding: 'utf8' });
  return { ...JSON.parse(out), seconds: (Date.now() - started) / 1000 };
};

const inBrowser = (model) => page.evaluate(async ({ model, question, max }) => {
  const seen = [];
  const info = await clo.load(model, { onProgress: (done, total) => seen.push([done, total]) });
  const ask = { messages: [{ role: 'user', content: question }], max_tokens: max, temperature: 0 };
  const t0 = performance.now();
  const whole = await clo.chat.completions.create(ask);
  const t1 = performance.now();
  // Again, now that the shaders are compiled: the speed printed below.
  await clo.chat.completions.create(ask);
  const t2 = performance.now();
  const chunks = [];
  for await (const chunk of await clo.chat.completions.create({ ...ask, stream: true })) {
    chunks.push(chunk);
  }
  return { info, progress: seen, whole, first_s: (t1 - t0) / 1000, warm_s: (t2 - t1) / 1000, chunks };
}, { model, question: QUESTION, max: MAX });

for (const [model, dir] of [['toy', () => `${workdir}/models/toy`],
  ['qwen2', () => new URL('../fixtures/models/qwen2', import.meta.url).pathname]]) {
  test(`${model}: greedy generation on WebGPU equals native clo generate`, async () => {
    const got = await inBrowser(model);
    const want = native(dir());
    assert.equal(got.info.device, 'webgpu');
    assert.ok(got.info.parameters > 0 && got.info.vocab_size > 0, JSON.stringify(got.info));
    const last = got.progress.at(-1);
    assert.ok(last && last[0] === last[1] && last[1] > 0, `progress ${JSON.stringify(got.progress)}`);
    const choice = got.whole.choices[0];
    assert.deepEqual(choice.token_ids, want.ids, `${model}: browser ${choice.token_ids} vs native ${want.ids}`);
    assert.equal(choice.message.content, want.text);
    assert.equal(choice.finish_reason, want.stop === 'eos' ? 'stop' : 'length');
    assert.equal(got.whole.usage.completion_tokens, want.ids.length);
    assert.equal(got.whole.usage.prompt_tokens, want.prompt_ids.length);
    // The stream: a role chunk, content pieces, a finish chunk; the pieces add up to the answer.
    const text = got.chunks.map((c) => c.choices[0].delta.content ?? '').join('');
    assert.equal(text, choice.message.content);
    assert.equal(got.chunks.at(-1).choices[0].finish_reason, choice.finish_reason);
    assert.ok(got.chunks.every((c) => c.object === 'chat.completion.chunk'));
    const lavapipe = native(dir(), 'wgpu:cpu');
    assert.deepEqual(lavapipe.ids, want.ids);
    const n = want.ids.length;
    console.log(`# ${model}: ${n} tokens; in-browser WebGPU (SwiftShader) ${(n / got.warm_s).toFixed(1)} tokens/s `
      + `(first call ${got.first_s.toFixed(1)} s with shader compilation); native lavapipe `
      + `${lavapipe.seconds.toFixed(1)} s and native CPU ${want.seconds.toFixed(1)} s per process, `
      + 'model load included');
  });
}

test('a reload loads the model from the browser cache, fetching no file again', async () => {
  await page.reload();
  const fetched = [];
  const watch = (req) => {
    const path = new URL(req.url()).pathname;
    if (path.startsWith('/api/models/toy/files/')) fetched.push(path);
  };
  page.on('request', watch);
  try {
    const info = await page.evaluate(() => clo.load('toy'));
    assert.equal(info.name, 'toy');
  } finally {
    page.off('request', watch);
  }
  assert.deepEqual(fetched, [], `fetched again: ${fetched}`);
});

test('a model directory loads by URL, as from a static host', async () => {
  const url = `${base}/api/models/qwen2/files`;
  const got = await page.evaluate(async (url) => {
    const info = await clo.load(url);
    const out = await clo.chat.completions.create({
      messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, temperature: 0 });
    return { info, ids: out.choices[0].token_ids };
  }, url);
  assert.equal(got.info.name, url);
  const config = JSON.parse(readFileSync(new URL('../fixtures/models/qwen2/config.json', import.meta.url), 'utf8'));
  assert.equal(got.info.vocab_size, config.vocab_size);
  assert.equal(got.ids.length, 3);
});

test('the playground answers on this browser\'s GPU, with its tokens/s', async () => {
  await page.goto(`${base}/playground`);
  await page.waitForSelector('select[name=a] option[value=toy]', { state: 'attached' });
  await page.selectOption('select[name=a]', 'toy');
  await page.selectOption('select[name=engine-a]', 'browser');
  await page.fill('input[name=temperature]', '0');
  await page.fill('textarea[name=prompt]', QUESTION);
  await page.click('form.chat-controls button[type=submit]');
  await page.waitForSelector('[data-pane=a] .turn.assistant .badge');
  const reply = await page.textContent('[data-pane=a] .turn.assistant .text');
  assert.equal(reply, native(`${workdir}/models/toy`).text);
  const status = await page.textContent('[data-pane=a] .engine-status');
  assert.match(status, /this browser \(WebGPU\): \d+ tokens in [\d.]+ s, [\d.]+ tokens\/s/, status);
});

test('CLO fine-tuning in the browser starts at native clo train\'s step 0 and lowers the loss', async () => {
  const data = `${workdir}/datasets/toy.jsonl`;
  const quads = readFileSync(data, 'utf8').split('\n').filter((l) => l.trim()).slice(0, 16)
    .map((l) => JSON.parse(l));
  const settings = { method: 'clo', trainable: 'attention', steps: 10, lr: 0.001, batch_size: 2, val_fraction: 0 };
  const out = join(mkdtempSync(join(tmpdir(), 'clo-e2e-')), 'run');
  const file = join(out + '-data.jsonl');
  (await import('node:fs')).writeFileSync(file, quads.map((q) => JSON.stringify(q)).join('\n') + '\n');
  execFileSync(clo, ['train', '--model', `${workdir}/models/toy`, '--data', file, '--method', 'clo',
    '--trainable', 'attention', '--steps', '1', '--batch-size', '2', '--lr', '0.001',
    '--val-fraction', '0', '--out', out, '--cache-dir', `${out}-cache`], { encoding: 'utf8' });
  const native0 = JSON.parse(readFileSync(`${out}/metrics.jsonl`, 'utf8').split('\n')[0]);
  const started = Date.now();
  const lines = await page.evaluate(async ({ quads, settings }) => {
    await clo.load('toy');
    const seen = [];
    const last = await clo.train({ ...settings, data: quads }, (line) => seen.push(line));
    return { seen, last };
  }, { quads, settings });
  const seconds = (Date.now() - started) / 1000;
  assert.equal(lines.seen.length, 10);
  assert.deepEqual(lines.last, lines.seen[9]);
  assert.equal(lines.seen[0].step, 0);
  assert.ok(Math.abs(lines.seen[0].loss - native0.loss) < 1e-4,
    `step 0: browser ${lines.seen[0].loss} vs native ${native0.loss}`);
  for (const key of ['loss_sft', 'loss_cl', 'margin_en', 'acc_tgt', 'grad_norm', 'lr', 'tokens_per_s']) {
    assert.ok(key in lines.seen[0], `no ${key}`);
  }
  const first = lines.seen.slice(0, 3).reduce((a, l) => a + l.loss, 0) / 3;
  const lastThree = lines.seen.slice(7).reduce((a, l) => a + l.loss, 0) / 3;
  assert.ok(lastThree < first, `the loss did not go down: ${lines.seen.map((l) => l.loss.toFixed(3))}`);
  const speeds = lines.seen.map((l) => l.tokens_per_s).sort((a, b) => a - b);
  console.log(`# 10 CLO steps (toy, 2 quadruples each) in the browser on SwiftShader: ${seconds.toFixed(0)} s, `
    + `median ${speeds[5].toFixed(1)} tokens/s per step (${lines.seen[1].tokens} tokens), `
    + `loss ${lines.seen[0].loss.toFixed(4)} -> ${lines.seen[9].loss.toFixed(4)}`);
});

const writeFiles = (dir, files) => {
  mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) writeFileSync(join(dir, name), Buffer.from(bytes));
};

/// `clo score`'s log-probs of `records` under a native model directory (and adapter).
const nativeScores = (records, args) => {
  const dir = mkdtempSync(join(tmpdir(), 'clo-score-'));
  writeFileSync(join(dir, 'in.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  execFileSync(clo, ['score', ...args, '--input', join(dir, 'in.jsonl'), '--output', join(dir, 'out.jsonl'),
    '--chat-template'], { encoding: 'utf8' });
  return readFileSync(join(dir, 'out.jsonl'), 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
};

test('a LoRA tuned in the browser, downloaded, gives native clo its log-probs (adapter and merged)', async () => {
  const qwen2 = new URL('../fixtures/models/qwen2', import.meta.url).pathname;
  const quads = readFileSync(`${workdir}/datasets/toy.jsonl`, 'utf8').split('\n').filter((l) => l.trim())
    .slice(0, 8).map((l) => JSON.parse(l));
  const records = quads.slice(0, 3).flatMap((q) => [
    { prompt: q.x_en, response: q.y_en }, { prompt: q.x_tgt, response: q.y_tgt }]);
  const got = await page.evaluate(async ({ quads, records }) => {
    await clo.load('qwen2');
    const before = await clo.score(records, { chat_template: true });
    const last = await clo.train({ method: 'clo', trainable: 'lora', steps: 3, lr: 0.01, batch_size: 2,
      lora_rank: 4, val_fraction: 0, data: quads });
    const after = await clo.score(records, { chat_template: true });
    const adapter = await clo.exportAdapter();
    const model = await clo.exportModel();
    const files = {};
    for (const [name, bytes] of Object.entries(model.files)) files[name] = Array.from(bytes);
    return { before, after, last, config: adapter.config, safetensors: Array.from(adapter.safetensors), files };
  }, { quads, records });
  assert.equal(got.last.step, 2);
  assert.equal(got.config.peft_type, 'LORA');
  assert.equal(got.config.r, 4);
  assert.equal(got.config.base_model_name_or_path, 'qwen2');
  assert.deepEqual(got.config.target_modules, ['q_proj', 'k_proj', 'v_proj', 'o_proj']);
  const root = mkdtempSync(join(tmpdir(), 'clo-download-'));
  writeFiles(join(root, 'adapter'), {
    'adapter_config.json': new TextEncoder().encode(JSON.stringify(got.config)),
    'adapter_model.safetensors': got.safetensors,
  });
  writeFiles(join(root, 'merged'), got.files);
  assert.ok('model.safetensors' in got.files && 'config.json' in got.files && 'tokenizer.json' in got.files);

  const base = nativeScores(records, ['--model', qwen2]);
  const adapted = nativeScores(records, ['--model', qwen2, '--adapter', join(root, 'adapter')]);
  const merged = nativeScores(records, ['--model', join(root, 'merged')]);
  const maxDiff = (a, b) => Math.max(...a.flatMap((r, i) => r.token_logps.map((v, t) => Math.abs(v - b[i].token_logps[t]))));
  for (let i = 0; i < records.length; i++) assert.equal(got.after[i].n_tokens, adapted[i].n_tokens);
  // The two downloads agree natively (base + adapter against the merged weights).
  const downloads = maxDiff(adapted, merged);
  assert.ok(downloads < 1e-5, `native base + adapter vs merged: ${downloads}`);
  // SwiftShader's WebGPU and native f32 differ on the base model itself (its exp and log are less
  // precise than the CPU's): the tuned model may differ by that floor, plus 1e-4, and no more,
  // while the tuning moved the log-probs far more than either.
  const floor = maxDiff(got.before, base);
  const tuned = maxDiff(got.after, adapted);
  const moved = maxDiff(adapted, base);
  console.log(`# per-token log-probs, browser (SwiftShader) vs native CPU: base ${floor.toExponential(2)}, `
    + `tuned ${tuned.toExponential(2)} (downloaded adapter); the tuning moved them by ${moved.toExponential(2)}`);
  assert.ok(floor < 2e-3, `base model: browser vs native ${floor}`);
  assert.ok(tuned <= floor + 1e-4, `tuned: browser vs native + downloaded adapter ${tuned}, base floor ${floor}`);
  assert.ok(moved > 10 * (floor + 1e-4), `the tuning moved the log-probs by ${moved} only`);
});

test('Train in browser: load, train with live charts, cancel, download the adapter, chat in the playground', async () => {
  await page.goto(`${base}/train-in-browser`);
  await page.waitForSelector('datalist#browser-models option[value=toy]', { state: 'attached' });
  await page.fill('input[name=model]', 'toy');
  await page.click('button[name=load]');
  await page.waitForFunction(() => document.querySelector('[data-testid=loaded]')?.textContent === 'toy');
  await page.waitForSelector('select[name=dataset] option[value=toy]', { state: 'attached' });
  await page.selectOption('select[name=method]', 'clo');
  await page.selectOption('select[name=trainable]', 'lora');
  await page.fill('input[name=steps]', '50');
  await page.fill('input[name=lr]', '0.002');
  await page.click('button[type=submit]');
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=points]')?.textContent) >= 3);
  await page.waitForSelector('figure[data-chart=loss] svg');
  await page.click('button[name=cancel]');
  const done = await (await page.waitForSelector('[data-testid=done]')).textContent();
  assert.match(done, /cancelled after \d+ steps, loss [\d.]+; this browser now holds toy\+clo/, done);
  const points = Number(await page.textContent('[data-testid=points]'));
  assert.ok(points >= 3 && points < 50, `${points} steps`);
  await page.screenshot({ path: join(process.env.CLO_E2E_ARTIFACTS ?? tmpdir(), 'train-in-browser.png'), fullPage: true });

  await page.click('button[name=download-adapter]');
  await page.waitForSelector('ul.downloads a[download="adapter_model.safetensors"]');
  const [download] = await Promise.all([page.waitForEvent('download'),
    page.click('ul.downloads a[download="adapter_model.safetensors"]')]);
  const saved = join(mkdtempSync(join(tmpdir(), 'clo-dl-')), 'adapter_model.safetensors');
  await download.saveAs(saved);
  const bytes = readFileSync(saved);
  const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8'));
  assert.ok(Object.keys(header).some((k) => k.endsWith('self_attn.q_proj.lora_A.weight')), Object.keys(header).join(' '));

  await page.click('text=Chat with it in the playground');
  await page.waitForSelector('select[name=a] option[value="toy+clo"]', { state: 'attached' });
  assert.equal(await page.inputValue('select[name=a]'), 'toy+clo');
  assert.equal(await page.inputValue('select[name=engine-a]'), 'browser');
  await page.fill('textarea[name=prompt]', QUESTION);
  await page.click('button[type=submit]');
  await page.waitForSelector('[data-pane=a] li.assistant:not(.streaming)');
  const status = await page.textContent('[data-pane=a] .engine-status');
  assert.match(status, /this browser \(WebGPU\)/, status);
});

test('a model folder picked on disk loads with no download and answers as native does', async () => {
  const qwen2 = new URL('../fixtures/models/qwen2', import.meta.url).pathname;
  await page.goto(`${base}/train-in-browser`);
  const requests = [];
  const count = (r) => { if (r.url().includes('/api/models/')) requests.push(r.url()); };
  page.on('request', count);
  await page.setInputFiles('input[name=folder]', qwen2);
  await page.waitForFunction(() => document.querySelector('[data-testid=loaded]')?.textContent === 'qwen2');
  const reply = await page.evaluate(async ({ question, max }) => {
    const out = await clo.chat.completions.create({
      messages: [{ role: 'user', content: question }], max_tokens: max, temperature: 0 });
    return out.choices[0].token_ids;
  }, { question: QUESTION, max: MAX });
  page.off('request', count);
  assert.deepEqual(requests, [], 'nothing was downloaded');
  assert.deepEqual(reply, native(qwen2).ids);
});

test('a tensor larger than the GPU buffer limit is refused with both sizes', async () => {
  const message = await page.evaluate(async () => {
    try {
      await clo.load('qwen2', { maxBufferBytes: 4096 });
      return 'loaded';
    } catch (e) {
      return String(e.message ?? e);
    }
  });
  // The fixture's largest tensor is the embedding, 316 x 64 f32 = 80896 bytes.
  assert.match(message, /takes 79\.0 KiB \(80896 bytes\) in f32/, message);
  assert.match(message, /maxBufferBytes given to clo\.load: 4\.0 KiB \(4096 bytes\)/, message);
  assert.match(message, /server engine/, message);
});

test('without WebGPU, loading says so', async () => {
  const plain = await launch(['--disable-gpu']);
  try {
    const p = await plain.newPage();
    await p.goto(`${base}/`);
    const message = await p.evaluate(async () => {
      // Hide WebGPU as a browser without it would.
      Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined });
      try {
        await clo.load('toy');
        return 'loaded';
      } catch (e) {
        return String(e.message ?? e);
      }
    });
    assert.match(message, /no WebGPU/, message);
    assert.match(message, /server engine/, message);
    // The server engine still answers in the playground of that browser.
    await p.evaluate((t) => localStorage.setItem('clo-token', JSON.stringify(t)), token);
    await p.goto(`${base}/playground`);
    await p.waitForSelector('select[name=a] option[value=toy]', { state: 'attached' });
    await p.selectOption('select[name=a]', 'toy');
    assert.equal(await p.inputValue('select[name=engine-a]'), 'server');
    await p.fill('textarea[name=prompt]', QUESTION);
    await p.click('button[type=submit]');
    await p.waitForSelector('[data-pane=a] li.assistant:not(.streaming)');
    const text = await p.textContent('[data-pane=a] li.assistant .text');
    assert.ok(text.trim().length > 0, 'the server answered');
  } finally {
    await plain.close();
  }
});

test('no errors in the page', () => {
  assert.deepEqual(pageErrors, []);
});
