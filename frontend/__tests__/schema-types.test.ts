// @vitest-environment node
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { generate, OUTPUT_PATH, SCHEMA_PATH } from '../scripts/gen-types.mjs';
import { recEvent } from './fakeEventSource';

describe('RecommendationReady v1 schema', () => {
  it('the committed TypeScript type is what `npm run gen:types` produces (no drift)', async () => {
    const committed = await readFile(OUTPUT_PATH, 'utf8');
    const fresh = await generate();
    expect(committed, 'schema and generated type differ: run `npm run gen:types`').toBe(fresh);
  });

  async function validator() {
    const schema = JSON.parse(await readFile(SCHEMA_PATH, 'utf8'));
    // ajv's CJS/ESM interop: the default export may be nested
    const AjvCtor = ((Ajv2020 as unknown as { default?: unknown }).default ?? Ajv2020) as typeof Ajv2020;
    const formats = ((addFormats as unknown as { default?: unknown }).default ?? addFormats) as typeof addFormats;
    const ajv = new AjvCtor({ strict: true, allErrors: true });
    formats(ajv);
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema.$id).toBe('https://smartscheduler.example/schemas/recommendation-ready.v1.schema.json');
    return ajv.compile(schema);
  }

  it('accepts the contract example and rejects what it must', async () => {
    const validate = await validator();
    const good = recEvent('7f3a9c21-1042');
    expect(validate(good), JSON.stringify(validate.errors)).toBe(true);
    expect(validate({ ...good, replayOf: '7f3a9c21-17' })).toBe(true);
    expect(validate({ ...good, summary: { ...good.summary, top: [], count: 0 } })).toBe(true);

    const top = good.summary.top[0];
    const bad: unknown[] = [
      { ...good, extra: 1 },
      { ...good, type: 'Other' },
      { ...good, position: '7F3A9C21-1' },
      { ...good, position: '7f3a9c21' },
      { ...good, groups: [] },
      { ...good, groups: ['Region:North'] },
      { ...good, eventId: 'not-a-uuid' },
      { ...good, occurredAt: 'yesterday' },
      { ...good, replayOf: 'bad' },
      { ...good, summary: { ...good.summary, count: -1 } },
      { ...good, summary: { ...good.summary, extra: true } },
      { ...good, summary: { ...good.summary, top: [top, top, top, top] } },
      { ...good, summary: { ...good.summary, top: [{ ...top, etaMinutes: 1.5 }] } },
      { ...good, summary: { ...good.summary, top: [{ ...top, extra: 1 }] } },
      (({ jobId: _omit, ...rest }) => rest)(good),
    ];
    for (const b of bad) expect(validate(b), JSON.stringify(b)).toBe(false);
  });
});
