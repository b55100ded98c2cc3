/**
 * MQTT topic filter matching (MQTT 3.1.1 §4.7): `+` matches exactly one level (which may be
 * empty), `#` matches the parent level and any number of levels below it and must be last, and a
 * filter that starts with a wildcard does not match topics that start with `$` (so `#` does not
 * see `$aws/...` traffic, while `$aws/rules/ingest/#` is matched as a plain filter).
 */
export function mqttTopicMatches(filter: string, topic: string): boolean {
  if (filter === topic) return true;
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i]!;
    if (level === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/**
 * Checks a topic filter's shape. Returns a short description of the problem, or undefined when
 * the filter is valid: non-empty, `#` only as the whole last level, `+` only as a whole level.
 */
export function validateTopicFilter(filter: string): string | undefined {
  if (filter.length === 0) return 'it is empty';
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return "'#' must be the whole last level";
    }
    if (level.includes('+') && level !== '+') return "'+' must be a whole level";
  }
  return undefined;
}
