/**
 * What AWS IoT Core accepts as a topic name to publish to, shared by every local front door (MQTT, HTTPS
 * publish, the data plane), so that the local hub refuses what the cloud refuses:
 *
 * - at most 256 bytes of UTF-8 and 8 levels (7 slashes), a Basic Ingest prefix `$aws/rules/{rule}/` not counted;
 * - no wildcard (`+`, `#`) and not empty;
 * - well-formed text: MQTT 3.1.1 (section 1.5.3) requires the connection to be closed for U+0000 and for
 *   ill-formed UTF-8. Node decodes ill-formed bytes as U+FFFD, so U+FFFD is refused as ill-formed (no
 *   device has a reason to send the replacement character in a topic); the noncharacters U+FFFE/U+FFFF
 *   (and U+FDD0..U+FDEF) and the C0/C1 control characters, which the standard says a
 *   topic SHOULD NOT hold and a server MAY refuse, are refused too.
 */

/** IoT Core's topic limits. */
export const MAX_TOPIC_BYTES = 256;
export const MAX_TOPIC_LEVELS = 8;

const BASIC_INGEST_PREFIX = /^\$aws\/rules\/[^/]+\//;
// C0 and C1 controls (U+0000 among them), U+FFFD, and the noncharacters.
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const ILL_FORMED = /[\u0000-\u001f\u007f-\u009f\ufdd0-\ufdef\ufffd\ufffe\uffff]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Describes a character a topic may not hold, for an error message. */
function describe(char: string): string {
  const code = char.codePointAt(0) ?? 0;
  const hex = `U+${code.toString(16).toUpperCase().padStart(4, '0')}`;
  if (code === 0) return `${hex} (NUL)`;
  if (code === 0xfffd) return `${hex} (bytes that are not UTF-8)`;
  return hex;
}

/** Why `topic` is no topic name IoT Core takes for a publish, or undefined when it is one. */
export function topicNameProblem(topic: string): string | undefined {
  if (topic === '') return 'the topic is empty';
  const bad = ILL_FORMED.exec(topic) ?? LONE_SURROGATE.exec(topic);
  if (bad) return `the topic holds ${describe(bad[0])} at character ${bad.index}, which a topic may not hold`;
  if (/[+#]/.test(topic)) return `'${clip(topic)}' is no topic name: it holds a wildcard (+, #)`;
  const inner = topic.replace(BASIC_INGEST_PREFIX, '');
  const bytes = Buffer.byteLength(inner);
  if (bytes > MAX_TOPIC_BYTES)
    return `topic '${clip(topic)}' is ${bytes} bytes; the limit is ${MAX_TOPIC_BYTES}`;
  const levels = inner.split('/').length;
  if (levels > MAX_TOPIC_LEVELS) {
    return `topic '${clip(topic)}' has ${levels} levels; the limit is ${MAX_TOPIC_LEVELS}`;
  }
  return undefined;
}

function clip(topic: string): string {
  return topic.length > 100 ? `${topic.slice(0, 100)}...` : topic;
}
