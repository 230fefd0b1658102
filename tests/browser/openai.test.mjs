// The OpenAI-compatible endpoint answers the official `openai` client library, streamed and
// not, and refuses a wrong key. Needs CLO_URL and CLO_TOKEN (tests/browser/run.sh sets them).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const base = process.env.CLO_URL;
const token = process.env.CLO_TOKEN;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: token, maxRetries: 0 });
const ask = { model: 'toy', messages: [{ role: 'user', content: 'What pet does Ana have?' }], temperature: 0, max_tokens: 24 };

test('models are listed', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.ok(ids.includes('toy'), `models: ${ids}`);
});

test('a streamed answer equals the whole one', async () => {
  const whole = await client.chat.completions.create(ask);
  const text = whole.choices[0].message.content;
  assert.ok(text.length > 0, 'an empty answer');
  assert.ok(['stop', 'length'].includes(whole.choices[0].finish_reason));
  assert.ok(whole.usage.completion_tokens > 0);
  const stream = await client.chat.completions.create({ ...ask, stream: true });
  let streamed = '';
  let chunks = 0;
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? '';
    chunks += 1;
  }
  assert.ok(chunks > 2, `only ${chunks} chunks`);
  assert.equal(streamed, text);
});

test('a wrong key is refused with the server message', async () => {
  const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrong.chat.completions.create(ask), (e) => {
    assert.equal(e.status, 401);
    assert.match(e.message, /bearer token/);
    return true;
  });
});

test('an unknown model is a 404 naming the model', async () => {
  await assert.rejects(client.chat.completions.create({ ...ask, model: 'nope' }), (e) => {
    assert.equal(e.status, 404);
    assert.match(e.message, /nope/);
    return true;
  });
});
