import { afterEach, describe, expect, it, vi } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  compileRouteCondition,
  RouteQueryError,
  type RoutingMessage,
  referencesBody,
  referencesTwin,
} from '../../functions/core/routing/query.ts';

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

function utf16(text: string, bigEndian: boolean, bom: boolean): Uint8Array {
  const units: number[] = bom ? [0xfeff] : [];
  for (let i = 0; i < text.length; i++) units.push(text.charCodeAt(i));
  const out = new Uint8Array(units.length * 2);
  const view = new DataView(out.buffer);
  units.forEach((u, i) => {
    view.setUint16(i * 2, u, !bigEndian);
  });
  return out;
}

function utf32(text: string, bigEndian: boolean, bom: boolean): Uint8Array {
  const points = [...(bom ? '\ufeff' : ''), ...text].map((c) => c.codePointAt(0) ?? 0);
  const out = new Uint8Array(points.length * 4);
  const view = new DataView(out.buffer);
  points.forEach((p, i) => {
    view.setUint32(i * 4, p, !bigEndian);
  });
  return out;
}

const BODY = {
  Weather: {
    Temperature: 50,
    Time: '2017-03-09T00:00:00.000Z',
    PrevTemperatures: [20, 30, 40],
    IsEnabled: true,
    Location: { Street: 'One Microsoft Way', City: 'Redmond', State: 'WA' },
    HistoricalData: [
      { Month: 'Feb', Temperature: 40 },
      { Month: 'Jan', Temperature: 30 },
    ],
  },
  matrix: [
    [1, 2],
    [3, 4],
  ],
  nothing: null,
  'weird key': 7,
  'a-b': 'dash',
  ratio: 0.5,
  neg: -3,
  name: 'Sensor-01',
  tags: ['a', 'b'],
};

const TWIN: RoutingMessage['twin'] = {
  tags: { deploymentLocation: { building: '43', floor: 1 } },
  properties: {
    desired: { telemetryConfig: { sendFrequency: '5m' }, $version: 3 },
    reported: { batteryLevel: 55, fw: null },
  },
};

const SYSTEM = {
  'content-type': 'application/json; charset=utf-8',
  'content-encoding': 'utf-8',
  'iothub-connection-device-id': 'dev-1',
  'iothub-connection-module-id': 'mod-a',
  'message-id': 'msg-42',
  'correlation-id': 'corr-7',
  'user-id': 'alice',
  'iothub-enqueuedtime': '2024-05-08T18:55:31.851Z',
  'iothub-connection-auth-method': '{"scope":"device","type":"sas","issuer":"iothub"}',
  'iothub-message-source': 'Telemetry',
  'dt-dataschema': 'dtmi:com:example:Thermostat;1',
  'dt-subject': 'thermostat1',
};

const PROPS = {
  processingPath: 'hot',
  severity: '4',
  verbose: 'true',
  Level: 'Critical',
  empty: '',
  $custom: 'x',
};

/** The documented sample message: JSON body, application properties, twin. */
const base: RoutingMessage = {
  systemProperties: SYSTEM,
  properties: PROPS,
  body: utf8(JSON.stringify(BODY)),
  twin: TWIN,
};

/** `base` with another body, content type and encoding. */
function withBody(body: Uint8Array, contentType?: string, contentEncoding?: string): RoutingMessage {
  return {
    ...base,
    systemProperties: { ...SYSTEM, 'content-type': contentType, 'content-encoding': contentEncoding },
    body,
  };
}

const INTL = JSON.stringify({ city: 'Zürich', emoji: '😀', n: 1 });
const noTwin: RoutingMessage = { ...base, twin: undefined };
const tagsOnlyTwin: RoutingMessage = { ...base, twin: { tags: { a: 1 } } };
const bare: RoutingMessage = { systemProperties: {}, properties: {}, body: new Uint8Array() };
const oddKeys: RoutingMessage = {
  systemProperties: { 'Message-Id': 'M', contentType: 'application/json', contentEncoding: 'UTF-8' },
  properties: {},
  body: utf8('{"x":1}'),
};

interface Case {
  condition: string;
  expected: boolean;
  message?: RoutingMessage;
  note?: string;
}

const cases: Case[] = [
  // Literals and the match-all conditions.
  { condition: 'true', expected: true },
  { condition: 'TRUE', expected: true, note: 'keywords ignore case' },
  { condition: '', expected: true, note: 'empty condition matches all' },
  { condition: '   ', expected: true, note: 'blank condition matches all' },
  { condition: 'false', expected: false },
  { condition: 'null', expected: false },
  { condition: 'undefined', expected: false },
  { condition: "'true'", expected: false, note: 'a string is not a Boolean' },
  { condition: '1', expected: false, note: 'a number is not a Boolean' },
  { condition: '(true)', expected: true },
  { condition: '1 = 1.0', expected: true },
  { condition: '0x10 = 16', expected: true },
  { condition: '1e3 = 1000', expected: true },
  { condition: '2.5E-1 = 0.25', expected: true },
  { condition: "'a' = 'a'", expected: true },
  { condition: `"a" = 'a'`, expected: true, note: 'double-quoted strings' },
  { condition: "'it''s' = CONCAT('it', '''', 's')", expected: true, note: 'doubled quote' },
  { condition: `'it\\'s' = "it's"`, expected: true, note: 'backslash escape' },
  { condition: `'\\u0041\\\\' = 'A\\\\'`, expected: true, note: 'unicode escape' },
  { condition: 'null = null', expected: true },
  { condition: 'true = true', expected: true },
  { condition: '1 = 2', expected: false },
  { condition: "1 = '1'", expected: false, note: 'mismatched types are undefined' },
  { condition: "NOT (1 = '1')", expected: false, note: 'NOT undefined stays undefined' },
  { condition: "1 != '1'", expected: false, note: '!= on mismatched types is undefined too' },
  { condition: 'null = 0', expected: false },
  { condition: 'NOT (null = 0)', expected: false },
  { condition: 'undefined = undefined', expected: false },
  { condition: '[1, 2] = [1, 2]', expected: true },
  { condition: "[1, 'a'] != [1, 'b']", expected: true },
  { condition: 'IS_ARRAY([])', expected: true },
  // Comparison operators.
  { condition: '2 != 3', expected: true },
  { condition: '2 != 2', expected: false },
  { condition: '2 <> 3', expected: true },
  { condition: '2 <> 2', expected: false },
  { condition: '1 < 2', expected: true },
  { condition: '2 < 1', expected: false },
  { condition: '2 > 1', expected: true },
  { condition: '1 > 1', expected: false },
  { condition: '2 <= 2', expected: true },
  { condition: '3 <= 2', expected: false },
  { condition: '2 >= 2', expected: true },
  { condition: '1 >= 2', expected: false },
  { condition: "'abc' < 'abd'", expected: true },
  { condition: "'B' < 'a'", expected: true, note: 'ordinal string order' },
  { condition: "'a' < 1", expected: false },
  { condition: "NOT ('a' < 1)", expected: false },
  { condition: 'NOT (false < true)', expected: false, note: 'Booleans have no order' },
  { condition: '-1 < 0', expected: true },
  // Arithmetic.
  { condition: '1 + 2 = 3', expected: true },
  { condition: '5 - 7 = -2', expected: true },
  { condition: '3 * 4 = 12', expected: true },
  { condition: '7 / 2 = 3.5', expected: true },
  { condition: '7 % 3 = 1', expected: true },
  { condition: '-7 % 3 = -1', expected: true },
  { condition: '2 + 3 * 4 = 14', expected: true, note: '* binds tighter than +' },
  { condition: '(2 + 3) * 4 = 20', expected: true },
  { condition: '10 - 4 - 3 = 3', expected: true, note: 'left associative' },
  { condition: '- (2 + 3) = -5', expected: true },
  { condition: '--5 = 5', expected: true },
  { condition: '+5 = 5', expected: true },
  { condition: "'a' + 'b' = 'ab'", expected: false, note: '+ does not join strings' },
  { condition: "IS_DEFINED('a' + 'b')", expected: false },
  { condition: 'IS_DEFINED(1 / 0)', expected: false, note: 'division by zero is undefined' },
  { condition: 'IS_DEFINED(5 % 0)', expected: false },
  { condition: 'IS_DEFINED(1 + null)', expected: false },
  { condition: "IS_DEFINED(-'a')", expected: false },
  { condition: '$body.Weather.Temperature + 10 = 60', expected: true },
  { condition: '$body.ratio * 4 = 2', expected: true },
  { condition: 'severity + 1 = 5', expected: false, note: 'application properties are strings' },
  // Logic, including three-valued results.
  { condition: 'true AND true', expected: true },
  { condition: 'true AND false', expected: false },
  { condition: 'false OR true', expected: true },
  { condition: 'false OR false', expected: false },
  { condition: 'NOT false', expected: true },
  { condition: 'NOT true', expected: false },
  { condition: 'NOT NOT true', expected: true },
  { condition: 'true OR undefined', expected: true },
  { condition: 'undefined OR true', expected: true },
  { condition: 'NOT (false AND undefined)', expected: true, note: 'false AND undefined is false' },
  { condition: 'NOT (undefined AND false)', expected: true },
  { condition: 'NOT (true AND undefined)', expected: false, note: 'true AND undefined is undefined' },
  { condition: 'NOT (false OR undefined)', expected: false },
  { condition: 'NOT (true AND 1)', expected: false, note: 'non-Boolean operands are undefined' },
  { condition: 'true OR false AND false', expected: true, note: 'AND binds tighter than OR' },
  { condition: '(true OR false) AND false', expected: false },
  { condition: 'NOT 1 = 2', expected: true, note: 'NOT binds looser than =' },
  { condition: 'true and not false', expected: true, note: 'lower-case keywords' },
  { condition: 'missing OR true', expected: true },
  { condition: 'NOT missing', expected: false },
  { condition: "NOT (missing = 'x')", expected: false },
  // System properties.
  { condition: "$contentType = 'application/json; charset=utf-8'", expected: true },
  { condition: "$contentEncoding = 'utf-8'", expected: true },
  { condition: "$connectionDeviceId = 'dev-1'", expected: true },
  { condition: "$CONNECTIONDEVICEID = 'dev-1'", expected: true, note: 'names ignore case' },
  { condition: "$connectionDeviceId = 'DEV-1'", expected: false, note: 'values keep case' },
  { condition: "$connectionModuleId = 'mod-a'", expected: true },
  { condition: "$messageId = 'msg-42'", expected: true },
  { condition: "$correlationId = 'corr-7'", expected: true },
  { condition: "$userId = 'alice'", expected: true },
  { condition: "$enqueuedTime > '2024-01-01'", expected: true },
  { condition: "$iothub-enqueuedtime = '2024-05-08T18:55:31.851Z'", expected: true },
  { condition: 'CONTAINS($iothub-connection-auth-method, \'"sas"\')', expected: true },
  { condition: '$connectionAuthMethod = $iothub-connection-auth-method', expected: true },
  { condition: "$messageSource = 'Telemetry'", expected: true },
  { condition: "$dt-dataschema = 'dtmi:com:example:Thermostat;1'", expected: true },
  { condition: "$dt-subject = 'thermostat1'", expected: true },
  { condition: "$iothub-connection-device-id = 'dev-1'", expected: true, note: 'wire name works too' },
  { condition: "$custom = 'x'", expected: true, note: 'falls back to an application property named $custom' },
  { condition: "$nothing = 'x'", expected: false },
  { condition: 'IS_DEFINED($nothing)', expected: false },
  { condition: "$messageId = 'M'", expected: true, message: oddKeys, note: 'record keys ignore case' },
  { condition: '$body.x = 1', expected: true, message: oddKeys, note: 'camelCase content keys' },
  { condition: 'IS_DEFINED($connectionModuleId)', expected: false, message: bare },
  { condition: "$connectionDeviceId.x = 'dev-1'", expected: false },
  // Application properties.
  { condition: "processingPath = 'hot'", expected: true },
  { condition: "PROCESSINGPATH = 'hot'", expected: true },
  { condition: "processingpath = 'hot'", expected: true },
  { condition: "processingPath = 'HOT'", expected: false },
  { condition: "level = 'Critical'", expected: true },
  { condition: "severity = '4'", expected: true },
  { condition: 'severity = 4', expected: false, note: 'string vs number is undefined' },
  { condition: 'AS_NUMBER(severity) = 4', expected: true },
  { condition: 'AS_NUMBER(severity) > 3', expected: true },
  { condition: 'verbose = true', expected: false },
  { condition: "verbose = 'true'", expected: true },
  { condition: "missing = 'x'", expected: false },
  { condition: "missing != 'x'", expected: false, note: 'missing is undefined, not unequal' },
  { condition: 'IS_DEFINED(missing)', expected: false },
  { condition: 'IS_DEFINED(processingPath)', expected: true },
  { condition: "empty = ''", expected: true },
  { condition: 'LENGTH(empty) = 0', expected: true },
  { condition: 'IS_DEFINED(processingPath.length)', expected: false },
  { condition: "processingPath = 'hot'", expected: false, message: bare },
  { condition: "body = 'x'", expected: false, note: 'bare body is just a property name' },
  // Message body.
  { condition: '$body.Weather.Temperature = 50', expected: true },
  { condition: '$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled', expected: true },
  { condition: "$body.Weather.HistoricalData[0].Month = 'Feb'", expected: true },
  { condition: '$body.Weather.HistoricalData[1].Temperature = 30', expected: true },
  { condition: 'IS_DEFINED($body.Weather.HistoricalData[2])', expected: false },
  { condition: '$body.Weather.PrevTemperatures[2] = 40', expected: true },
  { condition: '$body.matrix[1][0] = 3', expected: true, note: 'nested arrays' },
  { condition: 'IS_DEFINED($body.matrix[0][5])', expected: false },
  { condition: 'IS_ARRAY($body.matrix[0])', expected: true },
  { condition: "$body.tags = ['a', 'b']", expected: true },
  { condition: "$body['weird key'] = 7", expected: true },
  { condition: `$body["a-b"] = 'dash'`, expected: true },
  { condition: "$body.Weather['Location'].State = 'WA'", expected: true },
  { condition: 'length($body.Weather.Location.State) = 2', expected: true },
  { condition: '$body.weather.temperature = 50', expected: true, note: 'keys ignore case' },
  { condition: 'IS_NULL($body.nothing)', expected: true },
  { condition: 'IS_DEFINED($body.nothing)', expected: true, note: 'null is defined' },
  { condition: '$body.nothing = null', expected: true },
  { condition: 'IS_DEFINED($body.absent)', expected: false },
  { condition: 'IS_OBJECT($body.Weather)', expected: true },
  { condition: 'IS_OBJECT($body)', expected: false, note: 'the whole body is not queryable' },
  { condition: 'IS_DEFINED($body)', expected: false },
  { condition: 'IS_DEFINED($body.Weather.Temperature.x)', expected: false },
  { condition: 'IS_DEFINED($body.Weather[0])', expected: false, note: 'index on an object' },
  { condition: "IS_DEFINED($body.tags['0'])", expected: false, note: 'key on an array' },
  { condition: 'IS_DEFINED($body.Weather.PrevTemperatures.length)', expected: false },
  { condition: 'IS_DEFINED($body.constructor)', expected: false, note: 'no prototype members' },
  { condition: 'IS_DEFINED($body.__proto__)', expected: false },
  { condition: "$body.Weather.Temperature > 40 AND processingPath = 'hot'", expected: true },
  { condition: '$body.neg < 0', expected: true },
  {
    condition: 'IS_DEFINED($body[0])',
    expected: false,
    message: withBody(utf8('[1,2]'), 'application/json', 'utf-8'),
  },
  // Content type and encoding gate the body.
  {
    condition: '$body.Weather.Temperature = 50',
    expected: false,
    message: withBody(base.body, 'text/plain', 'utf-8'),
  },
  {
    condition: "processingPath = 'hot'",
    expected: true,
    message: withBody(base.body, 'text/plain', 'utf-8'),
  },
  {
    condition: 'IS_DEFINED($body.Weather)',
    expected: false,
    message: withBody(base.body, undefined, 'utf-8'),
  },
  {
    condition: '$body.Weather.Temperature = 50',
    expected: true,
    message: withBody(base.body, 'APPLICATION/JSON', 'UTF-8'),
  },
  {
    condition: '$body.Weather.Temperature = 50',
    expected: true,
    message: withBody(base.body, 'application/json;charset=utf-8', 'utf-8'),
  },
  {
    condition: 'IS_DEFINED($body.Weather)',
    expected: false,
    message: withBody(base.body, 'application/jsonx', 'utf-8'),
  },
  {
    condition: 'IS_DEFINED($body.Weather)',
    expected: false,
    message: withBody(base.body, 'application/json', undefined),
    note: 'no content encoding',
  },
  {
    condition: 'IS_DEFINED($body.Weather)',
    expected: false,
    message: withBody(base.body, 'application/json', 'iso-8859-1'),
  },
  {
    condition: 'IS_DEFINED($body.Weather)',
    expected: false,
    message: withBody(base.body, 'application/json', 'gzip'),
  },
  {
    condition: "$body.city = 'Zürich'",
    expected: true,
    message: withBody(utf8(INTL), 'application/json', 'utf-8'),
  },
  {
    condition: "$body.city = 'Zürich'",
    expected: true,
    message: withBody(utf8(`\ufeff${INTL}`), 'application/json', 'utf-8'),
    note: 'UTF-8 BOM',
  },
  {
    condition: "$body.city = 'Zürich' AND LENGTH($body.emoji) = 2",
    expected: true,
    message: withBody(utf16(INTL, false, false), 'application/json', 'utf-16'),
    note: 'UTF-16 little-endian without BOM',
  },
  {
    condition: "$body.city = 'Zürich'",
    expected: true,
    message: withBody(utf16(INTL, true, true), 'application/json', 'UTF-16'),
    note: 'UTF-16 big-endian with BOM',
  },
  {
    condition: "$body.city = 'Zürich'",
    expected: true,
    message: withBody(utf16(INTL, false, true), 'application/json', 'utf-16'),
    note: 'UTF-16 little-endian with BOM',
  },
  {
    condition: '$body.n = 1',
    expected: true,
    message: withBody(utf16(INTL, true, false), 'application/json', 'utf-16be'),
  },
  {
    condition: "$body.emoji = '😀' AND $body.city = 'Zürich'",
    expected: true,
    message: withBody(utf32(INTL, false, false), 'application/json', 'utf-32'),
    note: 'UTF-32 little-endian',
  },
  {
    condition: "$body.emoji = '😀'",
    expected: true,
    message: withBody(utf32(INTL, true, true), 'application/json', 'Utf-32'),
    note: 'UTF-32 big-endian with BOM',
  },
  {
    condition: 'IS_DEFINED($body.n)',
    expected: false,
    message: withBody(utf8('{"n":1}'), 'application/json', 'utf-16'),
    note: 'UTF-8 bytes declared as UTF-16',
  },
  {
    condition: 'IS_DEFINED($body.n)',
    expected: false,
    message: withBody(utf8('{"n":12}'), 'application/json', 'utf-32'),
    note: 'UTF-32 length not a multiple of 4',
  },
  {
    condition: 'IS_DEFINED($body.n)',
    expected: false,
    message: withBody(
      new Uint8Array([0x7b, 0x22, 0x6e, 0x22, 0x3a, 0xff, 0x7d]),
      'application/json',
      'utf-8',
    ),
    note: 'invalid UTF-8',
  },
  {
    condition: 'IS_DEFINED($body.n)',
    expected: false,
    message: withBody(utf8('{"n": 1'), 'application/json', 'utf-8'),
    note: 'malformed JSON',
  },
  {
    condition: "processingPath = 'hot'",
    expected: true,
    message: withBody(utf8('{"n": 1'), 'application/json', 'utf-8'),
  },
  // Twin.
  { condition: "$twin.tags.deploymentLocation.building = '43'", expected: true },
  { condition: '$twin.tags.deploymentLocation.floor = 1', expected: true },
  { condition: "$twin.properties.desired.telemetryConfig.sendFrequency = '5m'", expected: true },
  { condition: '$twin.properties.reported.batteryLevel > 50', expected: true },
  { condition: '$twin.properties.desired.$version = 3', expected: true },
  {
    condition: "$twin.TAGS.DeploymentLocation.Building = '43'",
    expected: true,
    note: 'twin paths ignore case',
  },
  { condition: 'IS_NULL($twin.properties.reported.fw)', expected: true },
  { condition: 'IS_DEFINED($twin.properties.reported.missing)', expected: false },
  { condition: 'IS_DEFINED($twin)', expected: false },
  {
    condition:
      "$body.Weather.Temperature = 50 AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
    expected: true,
  },
  {
    condition: "$twin.tags.deploymentLocation.building = '43'",
    expected: false,
    message: noTwin,
    note: 'no twin',
  },
  { condition: 'IS_DEFINED($twin.tags)', expected: false, message: noTwin },
  { condition: 'NOT IS_DEFINED($twin.tags)', expected: true, message: noTwin },
  { condition: '$twin.tags.a = 1', expected: true, message: tagsOnlyTwin },
  { condition: 'IS_DEFINED($twin.properties.desired.x)', expected: false, message: tagsOnlyTwin },
  // Type checking and casting functions.
  { condition: 'IS_NULL(null)', expected: true },
  { condition: 'IS_NULL(missing)', expected: false },
  { condition: 'IS_NULL(0)', expected: false },
  { condition: 'IS_BOOL(true)', expected: true },
  { condition: "IS_BOOL('true')", expected: false },
  { condition: 'IS_BOOL($body.Weather.IsEnabled)', expected: true },
  { condition: 'IS_NUMBER(1)', expected: true },
  { condition: "IS_NUMBER('1')", expected: false },
  { condition: 'IS_NUMBER(severity)', expected: false },
  { condition: "IS_STRING('x')", expected: true },
  { condition: 'IS_STRING(processingPath)', expected: true },
  { condition: 'IS_STRING(1)', expected: false },
  { condition: 'IS_OBJECT($body.tags)', expected: false },
  { condition: 'IS_OBJECT(null)', expected: false },
  { condition: 'IS_ARRAY($body.tags)', expected: true },
  { condition: "IS_ARRAY('a')", expected: false },
  { condition: 'IS_PRIMITIVE(null)', expected: true },
  { condition: "IS_PRIMITIVE('a')", expected: true },
  { condition: 'IS_PRIMITIVE(1) AND IS_PRIMITIVE(true)', expected: true },
  { condition: 'IS_PRIMITIVE($body.Weather)', expected: false },
  { condition: 'IS_PRIMITIVE(missing)', expected: false },
  { condition: "AS_NUMBER('12.5') = 12.5", expected: true },
  { condition: "AS_NUMBER(' 7 ') = 7", expected: true },
  { condition: "AS_NUMBER('-1e2') = -100", expected: true },
  { condition: 'AS_NUMBER(5) = 5', expected: true },
  { condition: "IS_DEFINED(AS_NUMBER('abc'))", expected: false },
  { condition: "IS_DEFINED(AS_NUMBER(''))", expected: false },
  { condition: 'IS_DEFINED(AS_NUMBER(true))', expected: false },
  { condition: "IS_DEFINED(AS_NUMBER('0x10'))", expected: false },
  { condition: "IS_DEFINED(AS_NUMBER('1e999'))", expected: false },
  // Mathematical functions.
  { condition: 'ABS(-5) = 5', expected: true },
  { condition: 'ABS($body.neg) = 3', expected: true },
  { condition: "IS_DEFINED(ABS('x'))", expected: false },
  { condition: 'EXP(0) = 1', expected: true },
  { condition: 'EXP(1) > 2.718 AND EXP(1) < 2.719', expected: true },
  { condition: 'POWER(2, 10) = 1024', expected: true },
  { condition: 'POWER(4, 0.5) = 2', expected: true },
  { condition: "IS_DEFINED(POWER('2', 2))", expected: false },
  { condition: 'IS_DEFINED(POWER(10, 400))', expected: false, note: 'overflow is undefined' },
  { condition: 'SQUARE(-3) = 9', expected: true },
  { condition: 'CEILING(1.2) = 2 AND CEILING(-1.2) = -1', expected: true },
  { condition: 'FLOOR(1.8) = 1 AND FLOOR(-1.2) = -2', expected: true },
  { condition: 'SIGN(-4) = -1 AND SIGN(0) = 0 AND SIGN(3.5) = 1', expected: true },
  { condition: 'SQRT(16) = 4', expected: true },
  { condition: 'IS_DEFINED(SQRT(-1))', expected: false },
  // String functions.
  { condition: "CONCAT('a', 'b', 'c') = 'abc'", expected: true },
  { condition: "CONCAT(processingPath, '-', $connectionDeviceId) = 'hot-dev-1'", expected: true },
  { condition: "IS_DEFINED(CONCAT('a', 1))", expected: false },
  { condition: "IS_DEFINED(CONCAT('a', missing))", expected: false },
  { condition: "LENGTH('hello') = 5", expected: true },
  { condition: 'LENGTH(processingPath) = 3', expected: true },
  { condition: 'IS_DEFINED(LENGTH(5))', expected: false },
  { condition: "LOWER(level) = 'critical'", expected: true },
  { condition: "UPPER('abc') = 'ABC'", expected: true },
  { condition: 'IS_DEFINED(LOWER(1))', expected: false },
  { condition: "SUBSTRING('hello', 1) = 'ello'", expected: true },
  { condition: "SUBSTRING('hello', 1, 3) = 'ell'", expected: true, note: 'third argument is a length' },
  { condition: "SUBSTRING('hello', 10) = ''", expected: true },
  { condition: "SUBSTRING('hello', -2, 2) = 'he'", expected: true },
  { condition: 'IS_DEFINED(SUBSTRING(5, 1))', expected: false },
  { condition: "IS_DEFINED(SUBSTRING('hello', 1, 'x'))", expected: false },
  { condition: "INDEX_OF('hello', 'l') = 2", expected: true },
  { condition: "INDEX_OF('hello', 'z') = -1", expected: true },
  { condition: "IS_DEFINED(INDEX_OF(1, 'a'))", expected: false },
  { condition: "STARTS_WITH($body.name, 'Sensor')", expected: true },
  { condition: "STARTS_WITH('abc', 'b')", expected: false },
  { condition: "NOT STARTS_WITH(1, 'a')", expected: false },
  { condition: "ENDS_WITH('abc', 'bc')", expected: true },
  { condition: "ENDS_WITH('abc', 'b')", expected: false },
  { condition: "CONTAINS('abc', 'b')", expected: true },
  { condition: "CONTAINS('abc', 'B')", expected: false },
  { condition: "CONTAINS('abc', '')", expected: true },
  { condition: 'is_defined(processingPath)', expected: true, note: 'function names ignore case' },
  { condition: "Length('ab') = 2", expected: true },
  { condition: "starts_with(level, 'Crit')", expected: true },
  { condition: "UPPER(SUBSTRING(level, 0, 4)) = 'CRIT'", expected: true },
  { condition: "CONTAINS(LOWER(CONCAT($messageId, '-', processingPath)), 'msg-42-hot')", expected: true },
];

describe('compileRouteCondition: evaluation table', () => {
  it('has at least 150 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(150);
  });

  it.each(cases)('$condition → $expected $note', ({ condition, expected, message }) => {
    expect(compileRouteCondition(condition).evaluate(message ?? base)).toBe(expected);
  });
});

interface SyntaxCase {
  condition: string;
  position: number;
  message: RegExp;
}

const syntaxErrors: SyntaxCase[] = [
  {
    condition: '(a = 1 AND b = 2',
    position: 17,
    message: /expected '\)' at position 17 but found end of input/,
  },
  { condition: '(a = 1 b = 2)', position: 8, message: /expected '\)' at position 8 but found 'b'/ },
  { condition: 'a = ', position: 5, message: /expected an expression at position 5 but found end of input/ },
  {
    condition: "a = 'unterminated",
    position: 5,
    message: /unterminated string literal starting at position 5/,
  },
  { condition: 'a # 1', position: 3, message: /unexpected character '#' at position 3/ },
  { condition: 'AND a = 1', position: 1, message: /expected an expression at position 1 but found 'AND'/ },
  { condition: 'a = 1 AND', position: 10, message: /expected an expression at position 10/ },
  { condition: 'FOO(a)', position: 1, message: /unknown function 'FOO' at position 1/ },
  { condition: 'LENGTH()', position: 1, message: /LENGTH expects 1 argument but got 0 at position 1/ },
  {
    condition: 'x = 1 AND POWER(2) = 4',
    position: 11,
    message: /POWER expects 2 arguments but got 1 at position 11/,
  },
  { condition: "CONCAT('a')", position: 1, message: /CONCAT expects at least 2 arguments but got 1/ },
  {
    condition: "SUBSTRING('a', 1, 2, 3)",
    position: 1,
    message: /SUBSTRING expects 2 to 3 arguments but got 4/,
  },
  { condition: 'IS_DEFINED(a, b)', position: 1, message: /IS_DEFINED expects 1 argument but got 2/ },
  {
    condition: '$body.a[',
    position: 9,
    message: /expected an array index .* at position 9 but found end of input/,
  },
  { condition: '$body.a[1.5] = 1', position: 9, message: /at position 9 but found '1.5'/ },
  { condition: '$body.a[-1] = 1', position: 9, message: /at position 9 but found '-'/ },
  { condition: '$body.a[0 = 1', position: 11, message: /expected '\]' at position 11 but found '='/ },
  { condition: '$body. = 1', position: 8, message: /expected a property name at position 8 but found '='/ },
  { condition: 'a = 1)', position: 6, message: /expected an operator .* at position 6 but found '\)'/ },
  { condition: "'a' = 1 2", position: 9, message: /at position 9 but found '2'/ },
  { condition: '$ = 1', position: 1, message: /expected a name after '\$' at position 1/ },
  { condition: 'a == 1', position: 4, message: /expected an expression at position 4 but found '='/ },
  { condition: 'a = 12abc', position: 5, message: /invalid number '12a' at position 5/ },
  { condition: "a = '\\q'", position: 6, message: /invalid escape sequence '\\q' at position 6/ },
  { condition: 'a = 0x', position: 7, message: /expected hexadecimal digits at position 7/ },
  { condition: 'a = [1, 2', position: 10, message: /expected ',' or '\]' at position 10/ },
  {
    condition: "CONTAINS('a' 'b')",
    position: 14,
    message: /expected ',' or '\)' at position 14 but found ''b''/,
  },
  { condition: '!a', position: 1, message: /unexpected character '!' at position 1/ },
  { condition: '()', position: 2, message: /expected an expression at position 2 but found '\)'/ },
  { condition: `${'('.repeat(100)}true${')'.repeat(100)}`, position: 65, message: /nesting deeper than 64/ },
];

describe('compileRouteCondition: syntax errors', () => {
  it.each(syntaxErrors)('rejects $condition at position $position', ({ condition, position, message }) => {
    let caught: unknown;
    try {
      compileRouteCondition(condition);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(RouteQueryError);
    expect(caught).toBeInstanceOf(ValidationError);
    const error = caught as RouteQueryError;
    expect(error.message).toMatch(/^route condition: /);
    expect(error.message).toMatch(message);
    expect(error.code).toBe('InvalidRouteCondition');
    expect(error.position).toBe(position);
    expect(error.context).toEqual({ position, condition });
  });
});

describe('compileRouteCondition: what the router needs to know', () => {
  it.each([
    { condition: "$twin.tags.building = '43'", body: false, twin: true },
    { condition: '$body.temperature > 30 AND $TWIN.tags.a = 1', body: true, twin: true },
    { condition: '$Body.temperature > 30', body: true, twin: false },
    { condition: "processingPath = 'hot'", body: false, twin: false },
    { condition: 'false AND $body.x = 1', body: true, twin: false },
    { condition: '', body: false, twin: false },
    { condition: "twin = 'x' AND body = 'y'", body: false, twin: false },
  ])('$condition uses body: $body, twin: $twin', ({ condition, body, twin }) => {
    const compiled = compileRouteCondition(condition);
    expect(compiled.usesBody).toBe(body);
    expect(compiled.usesTwin).toBe(twin);
    expect(referencesBody(condition)).toBe(body);
    expect(referencesTwin(condition)).toBe(twin);
  });

  it('referencesTwin and referencesBody reject invalid conditions', () => {
    expect(() => referencesTwin('$twin.tags.')).toThrow(RouteQueryError);
    expect(() => referencesBody('$body.(')).toThrow(RouteQueryError);
  });
});

describe('compileRouteCondition: compile once, evaluate many', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('evaluates one compiled condition over 10,000 messages', () => {
    const route = compileRouteCondition("$connectionDeviceId = 'even' AND $body.n >= 0");
    expect(Object.isFrozen(route)).toBe(true);
    const messages = Array.from({ length: 10_000 }, (_, i) =>
      withBody(utf8(`{"n":${i}}`), 'application/json', 'utf-8'),
    ).map((m, i) => ({
      ...m,
      systemProperties: {
        ...m.systemProperties,
        'iothub-connection-device-id': i % 2 === 0 ? 'even' : 'odd',
      },
    }));
    // `evaluate` is a free function: usable directly as a filter callback.
    expect(messages.filter(route.evaluate)).toHaveLength(5_000);
  });

  it('parses a body at most once, however many routes read it', () => {
    const parse = vi.spyOn(JSON, 'parse');
    const message = withBody(utf8('{"n":5}'), 'application/json', 'utf-8');
    const routes = ['$body.n = 5', '$body.n > 1', 'IS_NUMBER($body.n)'].map(compileRouteCondition);
    for (let i = 0; i < 100; i++) {
      for (const route of routes) expect(route.evaluate(message)).toBe(true);
    }
    expect(parse).toHaveBeenCalledTimes(1);
  });

  it('does not parse the body when AND short-circuits on false', () => {
    const parse = vi.spyOn(JSON, 'parse');
    const route = compileRouteCondition("processingPath = 'cold' AND $body.n = 5");
    expect(route.evaluate(withBody(utf8('{"n":5}'), 'application/json', 'utf-8'))).toBe(false);
    expect(parse).not.toHaveBeenCalled();
  });

  it('re-reads a body whose content type changed', () => {
    const body = utf8('{"n":5}');
    const route = compileRouteCondition('$body.n = 5');
    expect(route.evaluate(withBody(body, 'text/plain', 'utf-8'))).toBe(false);
    expect(route.evaluate(withBody(body, 'application/json', 'utf-8'))).toBe(true);
  });

  it('never throws while evaluating, whatever the twin holds', () => {
    const strange = {
      ...base,
      twin: { tags: { big: 10n, fn: () => 1, inf: Number.POSITIVE_INFINITY, date: new Date(0) } },
    } as unknown as RoutingMessage;
    for (const condition of [
      '$twin.tags.big = 10',
      'IS_DEFINED($twin.tags.fn)',
      'IS_NUMBER($twin.tags.inf)',
      'IS_OBJECT($twin.tags.date)',
    ]) {
      expect(compileRouteCondition(condition).evaluate(strange)).toBe(
        condition === 'IS_OBJECT($twin.tags.date)',
      );
    }
  });
});
