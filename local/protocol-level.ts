import type { Duplex } from 'node:stream';

/**
 * Answers a CONNECT whose protocol level the broker does not speak with CONNACK return code 1
 * ("unacceptable protocol version", MQTT 3.1.1 section 3.2.2.3) before the connection reaches aedes.
 *
 * aedes answers level 5 (MQTT 5) with CONNACK 1 itself, but its packet parser refuses any other unknown
 * level (6, 7, ...) as a malformed packet and drops the connection with no CONNACK and no log line. This
 * reads the first bytes of the connection (a CONNECT's fixed header, protocol name and level: at most 14
 * bytes), and either answers and closes, or puts the bytes back and hands the untouched stream on.
 *
 * `next` gets the stream for aedes unless the connection was answered and closed here.
 */
export function guardProtocolLevel(
  stream: Duplex,
  onRefused: (level: number) => void,
  next: (stream: Duplex) => void,
): void {
  let buffered = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    const level = connectProtocolLevel(buffered);
    if (level === 'more') return;
    stream.removeListener('data', onData);
    stream.removeListener('error', onError);
    stream.pause();
    if (level !== undefined && ![3, 4, 5].includes(level & 0x7f)) {
      onRefused(level);
      // CONNACK, remaining length 2, no session present, return code 1.
      stream.end(Buffer.from([0x20, 0x02, 0x00, 0x01]));
      return;
    }
    stream.unshift(buffered);
    next(stream);
  };
  const onError = () => stream.destroy();
  stream.on('data', onData);
  stream.on('error', onError);
}

/**
 * The protocol level of a CONNECT at the start of `bytes`: a number, `'more'` while the bytes that say it
 * have not all arrived, or undefined when this is no CONNECT (aedes deals with whatever it is).
 */
export function connectProtocolLevel(bytes: Buffer): number | 'more' | undefined {
  if (bytes.length < 1) return 'more';
  if (bytes[0] !== 0x10) return undefined;
  // Remaining length: 1 to 4 bytes, 7 bits each, high bit = more follow.
  let i = 1;
  for (; i < 5; i++) {
    if (i >= bytes.length) return 'more';
    if (((bytes[i] ?? 0) & 0x80) === 0) break;
  }
  if (i === 5) return undefined;
  const nameAt = i + 1;
  if (bytes.length < nameAt + 2) return 'more';
  const nameLength = bytes.readUInt16BE(nameAt);
  if (nameLength > 6) return undefined;
  const levelAt = nameAt + 2 + nameLength;
  if (bytes.length <= levelAt) return 'more';
  return bytes[levelAt];
}
