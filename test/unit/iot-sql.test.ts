// biome-ignore-all lint/suspicious/noTemplateCurlyInString: IoT substitution templates use ${...} on purpose.
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  compileIotSql,
  compileSubstitutionTemplate,
  evaluateSubstitutionTemplate,
  type IotSqlContext,
  IotSqlError,
  mqttTopicMatches,
} from '../../local/iot-sql.ts';

const TOPIC = 'devices/dev-1/messages/events/a=1';

const DOC = {
  color: 'red',
  temperature: 50,
  value: 7,
  flag: true,
  nothing: null,
  numText: '10',
  word: 'Hello',
  list: [10, 20, 30],
  state: { reported: { temp: 21.5, mode: 'eco' } },
};

function ctx(overrides: Partial<IotSqlContext> = {}): IotSqlContext {
  return {
    topic: TOPIC,
    payload: Buffer.from(JSON.stringify(DOC)),
    clientId: 'client-7',
    principal: 'cert-abc',
    timestamp: 1_700_000_000_000,
    newuuid: () => '00000000-0000-4000-8000-000000000001',
    ...overrides,
  };
}

const base64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

interface Case {
  readonly name: string;
  readonly sql: string;
  readonly expected: Record<string, unknown> | undefined;
  readonly payload?: Buffer;
  readonly topic?: string;
}

const F = "FROM 'devices/+/messages/events/#'";

const cases: readonly Case[] = [
  // SELECT shapes
  { name: 'SELECT * returns the JSON object payload', sql: `SELECT * ${F}`, expected: DOC },
  {
    name: 'SELECT *, expr AS name adds columns to the payload fields',
    sql: `SELECT *, topic(2) AS deviceId ${F}`,
    expected: { ...DOC, deviceId: 'dev-1' },
  },
  { name: 'AS renames a field', sql: `SELECT color AS rgb ${F}`, expected: { rgb: 'red' } },
  {
    name: 'an un-aliased field keeps its name',
    sql: `SELECT color, temperature ${F}`,
    expected: { color: 'red', temperature: 50 },
  },
  { name: 'nested field path', sql: `SELECT state.reported.temp AS t ${F}`, expected: { t: 21.5 } },
  {
    name: 'an un-aliased nested path is named by its last field',
    sql: `SELECT state.reported.mode ${F}`,
    expected: { mode: 'eco' },
  },
  {
    name: 'a missing field is Undefined and left out',
    sql: `SELECT missing, color ${F}`,
    expected: { color: 'red' },
  },
  {
    name: 'a path through a missing object is Undefined',
    sql: `SELECT missing.deeper.x AS x ${F}`,
    expected: {},
  },
  { name: 'array index', sql: `SELECT list[1] AS second ${F}`, expected: { second: 20 } },
  { name: 'object key by bracket', sql: `SELECT state['reported'].mode AS m ${F}`, expected: { m: 'eco' } },
  { name: 'null field is kept as null', sql: `SELECT nothing ${F}`, expected: { nothing: null } },
  {
    name: 'a field named value is a field, not SELECT VALUE',
    sql: `SELECT value AS v ${F}`,
    expected: { v: 7 },
  },
  {
    name: 'an un-aliased expression is named by its source text',
    sql: `SELECT topic(2) ${F}`,
    expected: { 'topic(2)': 'dev-1' },
  },
  {
    name: 'SELECT VALUE of an object',
    sql: `SELECT VALUE state.reported ${F}`,
    expected: { temp: 21.5, mode: 'eco' },
  },
  // literals
  {
    name: 'string, number, boolean and null literals',
    sql: `SELECT 'txt' AS s, "dq" AS d, 42 AS i, 1.5 AS f, -3 AS n, true AS t, FALSE AS ff, NULL AS z ${F}`,
    expected: { s: 'txt', d: 'dq', i: 42, f: 1.5, n: -3, t: true, ff: false, z: null },
  },
  {
    name: 'escaped quote in a string literal',
    sql: `SELECT 'it''s' AS a, 'x\\'y' AS b ${F}`,
    expected: { a: "it's", b: "x'y" },
  },
  {
    name: 'object and array literals',
    sql: `SELECT {'c': color, 'n': 1, 'gone': missing} AS o, [1, color] AS a ${F}`,
    expected: { o: { c: 'red', n: 1 }, a: [1, 'red'] },
  },
  // comparison operators
  { name: '= on equal numbers is true', sql: `SELECT temperature = 50 AS r ${F}`, expected: { r: true } },
  {
    name: '= on strings',
    sql: `SELECT color = 'red' AS a, color = 'blue' AS b ${F}`,
    expected: { a: true, b: false },
  },
  { name: '= on mismatched types is false', sql: `SELECT numText = 10 AS r ${F}`, expected: { r: false } },
  { name: '= with an Undefined side is Undefined', sql: `SELECT missing = 1 AS r ${F}`, expected: {} },
  {
    name: '= on objects is structural',
    sql: `SELECT state.reported = {'temp': 21.5, 'mode': 'eco'} AS r ${F}`,
    expected: { r: true },
  },
  {
    name: '<> and != are not-equal',
    sql: `SELECT color <> 'red' AS a, color != 'blue' AS b ${F}`,
    expected: { a: false, b: true },
  },
  {
    name: '< > <= >= compare numbers',
    sql: `SELECT temperature < 60 AS lt, temperature > 60 AS gt, temperature <= 50 AS le, temperature >= 51 AS ge ${F}`,
    expected: { lt: true, gt: false, le: true, ge: false },
  },
  { name: '< converts a numeric string', sql: `SELECT numText > 5 AS r ${F}`, expected: { r: true } },
  { name: '< on a non-numeric string is Undefined', sql: `SELECT color > 5 AS r ${F}`, expected: {} },
  // logical operators
  {
    name: 'AND, OR and NOT',
    sql: `SELECT flag AND false AS a, flag OR false AS o, NOT flag AS n, NOT (temperature > 60) AS nn ${F}`,
    expected: { a: false, o: true, n: false, nn: true },
  },
  {
    name: 'AND accepts "true"/"false" strings',
    sql: `SELECT 'TRUE' AND flag AS r ${F}`,
    expected: { r: true },
  },
  { name: 'AND on a non-boolean is Undefined', sql: `SELECT temperature AND flag AS r ${F}`, expected: {} },
  {
    name: 'AND binds tighter than OR',
    sql: `SELECT true OR false AND false AS r ${F}`,
    expected: { r: true },
  },
  // arithmetic
  {
    name: '+ - * on numbers',
    sql: `SELECT temperature + 1 AS a, temperature - 60 AS s, temperature * 2 AS m ${F}`,
    expected: { a: 51, s: -10, m: 100 },
  },
  {
    name: '/ on Ints truncates, on Decimals does not',
    sql: `SELECT 7 / 2 AS i, 7.5 / 2 AS d ${F}`,
    expected: { i: 3, d: 3.75 },
  },
  {
    name: '% is the remainder',
    sql: `SELECT 7 % 3 AS r, temperature % 7 AS t ${F}`,
    expected: { r: 1, t: 1 },
  },
  {
    name: 'division by zero is Undefined',
    sql: `SELECT temperature / 0 AS r, 1 % 0 AS m ${F}`,
    expected: {},
  },
  { name: '+ concatenates two strings', sql: `SELECT color + '-x' AS r ${F}`, expected: { r: 'red-x' } },
  {
    name: '+ converts a numeric string next to a number',
    sql: `SELECT numText + 5 AS r ${F}`,
    expected: { r: 15 },
  },
  {
    name: 'arithmetic on a non-numeric value is Undefined',
    sql: `SELECT color * 2 AS r, flag + 1 AS b ${F}`,
    expected: {},
  },
  {
    name: '* binds tighter than +',
    sql: `SELECT 1 + 2 * 3 AS a, (1 + 2) * 3 AS b ${F}`,
    expected: { a: 7, b: 9 },
  },
  { name: 'unary minus on a field', sql: `SELECT -temperature AS r ${F}`, expected: { r: -50 } },
  // IS
  {
    name: 'IS NULL and IS NOT NULL',
    sql: `SELECT nothing IS NULL AS a, color IS NULL AS b, color IS NOT NULL AS c ${F}`,
    expected: { a: true, b: false, c: true },
  },
  {
    name: 'IS UNDEFINED and IS NOT UNDEFINED',
    sql: `SELECT missing IS UNDEFINED AS a, nothing IS UNDEFINED AS b, color IS NOT UNDEFINED AS c ${F}`,
    expected: { a: true, b: false, c: true },
  },
  // CASE
  {
    name: 'CASE with a subject and with conditions',
    sql: `SELECT CASE color WHEN 'red' THEN 1 ELSE 0 END AS a, CASE WHEN temperature > 99 THEN 'hot' ELSE 'ok' END AS b ${F}`,
    expected: { a: 1, b: 'ok' },
  },
  // functions
  { name: 'topic() is the whole topic', sql: `SELECT topic() AS t ${F}`, expected: { t: TOPIC } },
  {
    name: 'topic(n) is the 1-based level',
    sql: `SELECT topic(1) AS a, topic(2) AS b, topic(5) AS c ${F}`,
    expected: { a: 'devices', b: 'dev-1', c: 'a=1' },
  },
  {
    name: 'topic(n) out of range is Undefined',
    sql: `SELECT topic(6) AS a, topic(0) AS b ${F}`,
    expected: {},
  },
  {
    name: 'clientid(), principal(), timestamp()',
    sql: `SELECT clientid() AS c, principal() AS p, timestamp() AS ts ${F}`,
    expected: { c: 'client-7', p: 'cert-abc', ts: 1_700_000_000_000 },
  },
  {
    name: 'newuuid() and traceid() use the injected generator',
    sql: `SELECT newuuid() AS id, traceid() AS tr ${F}`,
    expected: { id: '00000000-0000-4000-8000-000000000001', tr: '00000000-0000-4000-8000-000000000001' },
  },
  {
    name: "encode(*, 'base64') encodes the raw JSON bytes",
    sql: `SELECT encode(*, 'base64') AS body ${F}`,
    expected: { body: base64(JSON.stringify(DOC)) },
  },
  {
    name: "encode(expr, 'base64') encodes the value's text",
    sql: `SELECT encode(color, 'base64') AS c, encode(temperature, 'BASE64') AS t ${F}`,
    expected: { c: base64('red'), t: base64('50') },
  },
  {
    name: 'encode with an unsupported scheme is Undefined',
    sql: `SELECT encode(*, 'hex') AS r ${F}`,
    expected: {},
  },
  {
    name: 'get() on arrays and objects',
    sql: `SELECT get(list, 2) AS a, get(state.reported, 'mode') AS b, get(list, 9) AS c, get(color, 0) AS d ${F}`,
    expected: { a: 30, b: 'eco' },
  },
  {
    name: 'concat() of strings and numbers',
    sql: `SELECT concat(color, '-', temperature) AS a, concat(topic(2), '/x') AS b ${F}`,
    expected: { a: 'red-50', b: 'dev-1/x' },
  },
  {
    name: 'concat() with an array appends',
    sql: `SELECT concat(list, 40) AS r ${F}`,
    expected: { r: [10, 20, 30, 40] },
  },
  {
    name: 'concat() with an Undefined argument is Undefined',
    sql: `SELECT concat(color, missing) AS r ${F}`,
    expected: {},
  },
  {
    name: 'lower() and upper(), function names case-insensitive',
    sql: `SELECT lower(word) AS l, UPPER(word) AS u, Lower(flag) AS b ${F}`,
    expected: { l: 'hello', u: 'HELLO', b: 'true' },
  },
  {
    name: 'startswith() and endswith()',
    sql: `SELECT startswith(topic(), 'devices/') AS a, startswith(word, 'x') AS b, endswith(word, 'lo') AS c ${F}`,
    expected: { a: true, b: false, c: true },
  },
  {
    name: 'cast() to String, Int, Decimal and Bool',
    sql: `SELECT cast(temperature AS String) AS s, cast('12.9' AS Int) AS i, cast(numText AS Decimal) AS d, cast('TRUE' AS Bool) AS b, cast(0 AS Boolean) AS z ${F}`,
    expected: { s: '50', i: 12, d: 10, b: true, z: false },
  },
  {
    name: 'cast() of a non-numeric string to Int is Undefined',
    sql: `SELECT cast(color AS Int) AS r ${F}`,
    expected: {},
  },
  {
    name: 'isundefined(), isnull() and abs()',
    sql: `SELECT isundefined(missing) AS u, isnull(nothing) AS n, abs(-temperature) AS a ${F}`,
    expected: { u: true, n: true, a: 50 },
  },
  // WHERE
  {
    name: 'WHERE true returns the output',
    sql: `SELECT color ${F} WHERE temperature > 40`,
    expected: { color: 'red' },
  },
  {
    name: 'WHERE false returns undefined',
    sql: `SELECT color ${F} WHERE temperature > 60`,
    expected: undefined,
  },
  {
    name: 'WHERE on a missing field (Undefined) returns undefined',
    sql: `SELECT * ${F} WHERE missing = 1`,
    expected: undefined,
  },
  {
    name: 'WHERE on a non-boolean value returns undefined',
    sql: `SELECT * ${F} WHERE temperature`,
    expected: undefined,
  },
  {
    name: 'WHERE with functions, AND and nested fields',
    sql: `SELECT topic(2) AS d ${F} WHERE state.reported.mode = 'eco' AND startswith(clientid(), 'client')`,
    expected: { d: 'dev-1' },
  },
  {
    name: 'keywords are case-insensitive',
    sql: `select Color as c from 'devices/#' where NOT flag = false and temperature IS not null`,
    expected: {},
  },
  {
    name: 'lower-case keywords select a field',
    sql: `select color as c from 'devices/#' where flag`,
    expected: { c: 'red' },
  },
  {
    name: 'a multi-line statement',
    sql: `SELECT\n  color AS c,\n  temperature\nFROM 'devices/+/messages/events/#'\nWHERE temperature = 50`,
    expected: { c: 'red', temperature: 50 },
  },
  // payload kinds
  {
    name: 'SELECT * on a non-JSON payload gives no fields',
    sql: `SELECT * ${F}`,
    payload: Buffer.from('not json'),
    expected: {},
  },
  {
    name: 'field references on a non-JSON payload are Undefined',
    sql: `SELECT color, topic(2) AS d ${F}`,
    payload: Buffer.from('plain text'),
    expected: { d: 'dev-1' },
  },
  {
    name: 'encode(*) and topic() on a binary payload',
    sql: `SELECT encode(*, 'base64') AS body, topic() AS topic ${F}`,
    payload: Buffer.from([0x00, 0xff, 0x10, 0x80]),
    expected: { body: 'AP8QgA==', topic: TOPIC },
  },
  {
    name: 'encode(*) and topic() on an empty payload',
    sql: `SELECT encode(*, 'base64') AS body, topic() AS topic ${F}`,
    payload: Buffer.alloc(0),
    expected: { body: '', topic: TOPIC },
  },
  {
    name: 'SELECT * on a JSON array payload gives no fields',
    sql: `SELECT * ${F}`,
    payload: Buffer.from('[1,2]'),
    expected: {},
  },
  {
    name: 'a JSON payload with a __proto__ key stays a plain own field',
    sql: `SELECT * ${F}`,
    payload: Buffer.from('{"__proto__":{"polluted":1},"a":1}'),
    expected: JSON.parse('{"__proto__":{"polluted":1},"a":1}') as Record<string, unknown>,
  },
  {
    name: 'the FROM filter is not checked by evaluate (matchesTopic is)',
    sql: `SELECT topic(1) AS t FROM 'other/topic'`,
    topic: 'devices/x',
    expected: { t: 'devices' },
  },
];

describe('compileIotSql evaluate', () => {
  it.each(cases)('$name', ({ sql, expected, payload, topic }) => {
    const compiled = compileIotSql(sql);
    const overrides: Partial<IotSqlContext> = {};
    if (payload !== undefined) overrides.payload = payload;
    if (topic !== undefined) overrides.topic = topic;
    expect(compiled.evaluate(ctx(overrides))).toEqual(expected);
  });

  it('compiles once and evaluates many messages', () => {
    const compiled = compileIotSql(`SELECT temperature AS t, topic(2) AS d ${F} WHERE temperature > 0`);
    for (let i = 1; i <= 100; i++) {
      const out = compiled.evaluate(
        ctx({
          topic: `devices/d${i}/messages/events`,
          payload: Buffer.from(JSON.stringify({ temperature: i })),
        }),
      );
      expect(out).toEqual({ t: i, d: `d${i}` });
    }
  });

  it('a __proto__ payload key does not pollute Object.prototype', () => {
    compileIotSql(`SELECT * ${F}`).evaluate(ctx({ payload: Buffer.from('{"__proto__":{"polluted":1}}') }));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('compileIotSql topicFilter, matchesTopic and evaluatePayload', () => {
  it('exposes the FROM filter and matches topics with it', () => {
    const compiled = compileIotSql("SELECT * FROM 'devices/+/messages/events/#'");
    expect(compiled.topicFilter).toBe('devices/+/messages/events/#');
    expect(compiled.matchesTopic('devices/d1/messages/events/a=1')).toBe(true);
    expect(compiled.matchesTopic('devices/d1/messages/devicebound')).toBe(false);
  });

  it('a $aws/rules filter is a plain filter', () => {
    const compiled = compileIotSql("SELECT * FROM '$aws/rules/ingest/devices/+/telemetry'");
    expect(compiled.topicFilter).toBe('$aws/rules/ingest/devices/+/telemetry');
    expect(compiled.matchesTopic('$aws/rules/ingest/devices/d1/telemetry')).toBe(true);
    expect(compiled.matchesTopic('devices/d1/telemetry')).toBe(false);
  });

  it('evaluatePayload passes a non-JSON payload through for a bare SELECT *', () => {
    const compiled = compileIotSql(`SELECT * ${F}`);
    expect(compiled.selectsWholePayload).toBe(true);
    const raw = Buffer.from([1, 2, 3]);
    expect(compiled.evaluatePayload(ctx({ payload: raw }))).toBe(raw);
    expect(JSON.parse(compiled.evaluatePayload(ctx())!.toString())).toEqual(DOC);
  });

  it('evaluatePayload serializes columns and SELECT VALUE scalars as JSON', () => {
    expect(compileIotSql(`SELECT color AS c ${F}`).evaluatePayload(ctx())!.toString()).toBe('{"c":"red"}');
    expect(compileIotSql(`SELECT VALUE temperature ${F}`).evaluatePayload(ctx())!.toString()).toBe('50');
    expect(compileIotSql(`SELECT VALUE missing ${F}`).evaluatePayload(ctx())!.length).toBe(0);
    expect(compileIotSql(`SELECT * ${F} WHERE false`).evaluatePayload(ctx())).toBeUndefined();
  });
});

describe('mqttTopicMatches', () => {
  it.each([
    ['a/b/c', 'a/b/c', true],
    ['a/b/c', 'a/b/d', false],
    ['a/b', 'a/b/c', false],
    ['a/+/c', 'a/b/c', true],
    ['a/+/c', 'a/b/x/c', false],
    ['a/+', 'a/', true],
    ['+/+', 'a/b', true],
    ['a/#', 'a/b/c/d', true],
    ['a/#', 'a', true],
    ['a/b/#', 'a', false],
    ['#', 'anything/at/all', true],
    ['#', '$aws/things/t/shadow/update', false],
    ['+/things/#', '$aws/things/t', false],
    ['$aws/rules/ingest/#', '$aws/rules/ingest/devices/d1', true],
    ['$aws/rules/ingest/#', '$aws/rules/other/devices/d1', false],
    ['devices/+/messages/events/#', 'devices/d1/messages/events/', true],
  ] as const)('filter %s on topic %s is %s', (filter, topic, expected) => {
    expect(mqttTopicMatches(filter, topic)).toBe(expected);
  });
});

describe('evaluateSubstitutionTemplate', () => {
  it.each([
    ['${topic(2)}', 'dev-1'],
    ['${clientid()}', 'client-7'],
    ['prefix-${topic(3)}-x', 'prefix-messages-x'],
    ['no expressions here', 'no expressions here'],
    ['${principal()}/${timestamp()}', 'cert-abc/1700000000000'],
    ['${state.reported.mode}', 'eco'],
    ['${missing}|', '|'],
    ['${state.reported}', '{"temp":21.5,"mode":"eco"}'],
    ["${concat('a}', color)}", 'a}red'],
    ["${get({'k': 'v'}, 'k')}", 'v'],
    ['${upper(color)}-${temperature + 1}', 'RED-51'],
    ['$ {not a template} and $', '$ {not a template} and $'],
  ])('template %s renders %s', (template, expected) => {
    expect(evaluateSubstitutionTemplate(template, ctx())).toBe(expected);
  });

  it('renders templates on a non-JSON payload (fields empty, functions work)', () => {
    expect(
      evaluateSubstitutionTemplate('${topic(2)}:${color}', ctx({ payload: Buffer.from('\u0000') })),
    ).toBe('dev-1:');
  });

  it('a compiled template is reusable', () => {
    const render = compileSubstitutionTemplate('${topic(2)}');
    expect(render(ctx({ topic: 'devices/a/x' }))).toBe('a');
    expect(render(ctx({ topic: 'devices/b/x' }))).toBe('b');
  });

  it('an unterminated ${ must fail naming its position', () => {
    expect(() => evaluateSubstitutionTemplate('key-${topic(2)', ctx())).toThrow(/closing '}' .*position 5 /);
  });

  it('a bad expression in a template must fail with the position in the template', () => {
    expect(() => evaluateSubstitutionTemplate('ab${topic(}', ctx())).toThrow(/position 11 /);
  });
});

describe('compileIotSql syntax errors', () => {
  it.each([
    [
      'a missing select list must fail at the FROM',
      "SELECT FROM 'a'",
      8,
      /expected an expression at position 8 .*found 'FROM'/,
    ],
    ['a missing SELECT must fail at the start', "* FROM 'a'", 1, /expected SELECT at position 1/],
    ['an unquoted topic filter must fail', 'SELECT * FROM a/b', 15, /quoted topic filter.*found 'a'/],
    ['a missing FROM must fail', 'SELECT *', 9, /expected FROM .*the end of the statement/],
    ['a misspelled WHERE must fail', "SELECT * FROM 'a' WHER x", 19, /WHERE or the end.*found 'WHER'/],
    ['a # that is not last must fail', "SELECT * FROM 'a/#/b'", 15, /'#' must be the whole last level/],
    ['a + inside a level must fail', "SELECT * FROM 'a/b+'", 15, /'\+' must be a whole level/],
    ['an empty topic filter must fail', "SELECT * FROM ''", 15, /it is empty/],
    ['an unknown function must fail', "SELECT nosuch(1) FROM 'a'", 8, /unknown function 'nosuch'/],
    ['a wrong argument count must fail', "SELECT encode(*) FROM 'a'", 8, /2 argument\(s\) for encode\(\)/],
    ['an unclosed parenthesis must fail', "SELECT (1 + 2 FROM 'a'", 15, /expected '\)'/],
    ['an unterminated topic filter string must fail', "SELECT * FROM 'a/b", 15, /closing '/],
    ['a stray character must fail', "SELECT # FROM 'a'", 8, /found '#'/],
    ['a dangling operator must fail', "SELECT 1 + FROM 'a'", 12, /expected an expression .*found 'FROM'/],
    ['a bad cast type must fail', "SELECT cast(1 AS Float) FROM 'a'", 18, /cast type/],
    ['IS without NULL must fail', "SELECT * FROM 'a' WHERE x IS 3", 30, /NOT, NULL or UNDEFINED/],
    ['trailing text must fail', "SELECT * FROM 'a' WHERE x = 1 2", 31, /an operator or the end.*found '2'/],
    [
      'an error on a later line must fail with its line',
      "SELECT *\nFROM 'a'\nWHERE = 1",
      25,
      /line 3, column 7/,
    ],
  ] as const)('%s', (_name, sql, position, message) => {
    let caught: unknown;
    try {
      compileIotSql(sql);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(IotSqlError);
    expect(caught).toBeInstanceOf(ValidationError);
    const error = caught as IotSqlError;
    expect(error.code).toBe('InvalidIotSql');
    expect(error.message).toMatch(message);
    expect(error.message).toContain(`position ${position} `);
    expect(error.position.offset).toBe(position - 1);
    expect(error.context.sql).toBe(sql);
  });
});
